//! The one place where engine errors become Python exceptions.
//!
//! Each [`EngineError`] variant is raised as an instance of a class of the
//! Python module `stoker.errors`, built with that class's own constructor, so
//! the exceptions raised here are the same objects (with the same attributes
//! and pickling) as those the Python layer raises itself.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;
use stoker_engine::EngineError;

/// `stoker.errors`, imported on the first error and kept.
static ERRORS_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn errors_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    ERRORS_MODULE
        .get_or_try_init(py, || py.import("stoker.errors").map(Bound::unbind))
        .map(|module| module.bind(py))
}

/// The Python exception for `error`. If `stoker.errors` cannot be imported or a
/// class cannot be built, that failure is raised instead, since it is the
/// more urgent problem.
pub fn to_py(py: Python<'_>, error: EngineError) -> PyErr {
    build(py, error).unwrap_or_else(|failure| failure)
}

fn build(py: Python<'_>, error: EngineError) -> PyResult<PyErr> {
    let module = errors_module(py)?;
    let class = |name: &str| module.getattr(name);
    let instance = match error {
        EngineError::NotFound(job_id) => class("JobNotFoundError")?.call1((job_id,))?,
        EngineError::NotOurDatabase { path, reason } => {
            class("NotAStokerDatabaseError")?.call1((path, reason))?
        }
        EngineError::SchemaVersion {
            path,
            found,
            expected,
        } => class("SchemaVersionError")?.call1((path, found, expected))?,
        EngineError::InvalidOption(message) => class("InvalidOptionError")?.call1((message,))?,
        EngineError::JobState {
            job_id,
            status,
            operation,
        } => class("JobStateError")?.call1((job_id, status, operation))?,
        EngineError::Busy(message) => class("StorageBusyError")?.call1((message,))?,
        EngineError::Storage(message) => class("StorageError")?.call1((message,))?,
        EngineError::RateLimited {
            key,
            retry_after_ms,
        } => class("RateLimitExceededError")?.call1((key, retry_after_ms as f64 / 1000.0))?,
        EngineError::BreakerOpen {
            task_name,
            open_until_ms,
        } => class("CircuitBreakerOpenError")?.call1((task_name, open_until_ms as f64 / 1000.0))?,
        EngineError::ScheduleNotFound(id) => class("ScheduleNotFoundError")?.call1((id,))?,
    };
    Ok(PyErr::from_value(instance))
}

/// Converts engine results at the boundary: `result.or_raise(py)?`.
pub trait OrRaise<T> {
    /// The value, or the engine error as its Python exception.
    fn or_raise(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> OrRaise<T> for Result<T, EngineError> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|error| to_py(py, error))
    }
}
