//! SQLite's rows as the engine's [`Columns`], so the engine's decoders read
//! them as they read PostgreSQL's.

use rusqlite::Row;
use stoker_engine::model::Status;
use stoker_engine::rows::Columns;

/// One row of a SQLite result.
pub(crate) struct SqlRow<'a, 'r>(pub(crate) &'a Row<'r>);

impl Columns for SqlRow<'_, '_> {
    type Error = rusqlite::Error;

    fn int(&self, index: usize) -> rusqlite::Result<i64> {
        self.0.get(index)
    }

    fn opt_int(&self, index: usize) -> rusqlite::Result<Option<i64>> {
        self.0.get(index)
    }

    fn text(&self, index: usize) -> rusqlite::Result<String> {
        self.0.get(index)
    }

    fn opt_text(&self, index: usize) -> rusqlite::Result<Option<String>> {
        self.0.get(index)
    }

    fn bytes(&self, index: usize) -> rusqlite::Result<Vec<u8>> {
        self.0.get(index)
    }

    fn opt_bytes(&self, index: usize) -> rusqlite::Result<Option<Vec<u8>>> {
        self.0.get(index)
    }

    fn float(&self, index: usize) -> rusqlite::Result<f64> {
        self.0.get(index)
    }

    fn status(&self, index: usize) -> rusqlite::Result<Status> {
        let code: i64 = self.0.get(index)?;
        Status::from_code(code).ok_or(rusqlite::Error::IntegralValueOutOfRange(index, code))
    }
}
