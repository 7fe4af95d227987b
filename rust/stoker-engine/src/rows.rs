//! Rows as both drivers give them, so that each record is decoded once.
//!
//! A backend wraps its driver's row in a type implementing [`Columns`]
//! (typed reads by column index, with the driver's own error), and the
//! decoders of the engine ([`crate::decide::limits::limit_from_row`],
//! [`crate::decide::failure::failure_state_from_row`], ...) read the columns
//! in the order of the `*_COLUMNS` lists next to them.

use crate::model::Status;

/// Typed reads of one row's columns by index.
pub trait Columns {
    /// The driver's error (a missing column, a type that does not match).
    type Error;

    /// A non-null integer (BIGINT) column.
    fn int(&self, index: usize) -> Result<i64, Self::Error>;

    /// A nullable integer column.
    fn opt_int(&self, index: usize) -> Result<Option<i64>, Self::Error>;

    /// A non-null text column.
    fn text(&self, index: usize) -> Result<String, Self::Error>;

    /// A nullable text column.
    fn opt_text(&self, index: usize) -> Result<Option<String>, Self::Error>;

    /// A non-null blob (BYTEA) column.
    fn bytes(&self, index: usize) -> Result<Vec<u8>, Self::Error>;

    /// A nullable blob column.
    fn opt_bytes(&self, index: usize) -> Result<Option<Vec<u8>>, Self::Error>;

    /// A non-null float (DOUBLE PRECISION) column.
    fn float(&self, index: usize) -> Result<f64, Self::Error>;

    /// A status column: its code read as a [`Status`], an unknown code being
    /// the driver's conversion error.
    fn status(&self, index: usize) -> Result<Status, Self::Error>;

    /// A flag stored as an integer (0 is false).
    fn flag(&self, index: usize) -> Result<bool, Self::Error> {
        Ok(self.int(index)? != 0)
    }
}
