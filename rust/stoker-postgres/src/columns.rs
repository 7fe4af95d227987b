//! PostgreSQL's rows as the engine's [`Columns`], so the engine's decoders
//! read them as they read SQLite's.

use postgres::Row;
use stoker_engine::model::Status;
use stoker_engine::rows::Columns;

use crate::{status_of, PgError, PgResult};

/// One row of a PostgreSQL result.
pub(crate) struct PgRow<'a>(pub(crate) &'a Row);

impl Columns for PgRow<'_> {
    type Error = PgError;

    fn int(&self, index: usize) -> PgResult<i64> {
        Ok(self.0.try_get(index)?)
    }

    fn opt_int(&self, index: usize) -> PgResult<Option<i64>> {
        Ok(self.0.try_get(index)?)
    }

    fn text(&self, index: usize) -> PgResult<String> {
        Ok(self.0.try_get(index)?)
    }

    fn opt_text(&self, index: usize) -> PgResult<Option<String>> {
        Ok(self.0.try_get(index)?)
    }

    fn bytes(&self, index: usize) -> PgResult<Vec<u8>> {
        Ok(self.0.try_get(index)?)
    }

    fn opt_bytes(&self, index: usize) -> PgResult<Option<Vec<u8>>> {
        Ok(self.0.try_get(index)?)
    }

    fn float(&self, index: usize) -> PgResult<f64> {
        Ok(self.0.try_get(index)?)
    }

    fn status(&self, index: usize) -> PgResult<Status> {
        status_of(self.0.try_get(index)?)
    }
}
