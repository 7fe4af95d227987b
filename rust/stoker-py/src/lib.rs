//! `stoker._core`: the Python binding of the stoker engine.
//!
//! The binding is thin on purpose: it converts arguments, releases the GIL
//! around every call that touches storage, and converts results and errors
//! (the latter only in [`errors`]). The API it exposes is specified by
//! `python/stoker/_core.pyi`.

mod engine;
mod errors;
mod flow;
mod open;
mod records;
mod types;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    open::init_module(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<types::NewJob>()?;
    m.add_class::<types::ClaimedJob>()?;
    m.add_class::<types::JobRecord>()?;
    m.add_class::<types::ErrorRecord>()?;
    m.add_class::<types::StaleOutcome>()?;
    m.add_class::<flow::Schedule>()?;
    m.add_class::<flow::ScheduleFire>()?;
    m.add_class::<flow::LimitState>()?;
    m.add_class::<engine::Engine>()?;
    Ok(())
}
