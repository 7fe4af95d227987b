//! [`ScheduleStorage`] for [`PostgresStorage`]: schedules and their fires
//! (written once in the engine's `decide::fire`, over the [`FireSteps`]
//! here).

use crate::columns::PgRow;
use crate::{sql_count, PgError, PgResult, PostgresStorage, Tx};
use postgres::Row;
use stoker_engine::decide::fire::{FireLog, FireSteps};
use stoker_engine::error::EngineError;
use stoker_engine::model::NewJob;
use stoker_engine::rows::{self, fire_from_row, FIRE_COLUMNS, SCHEDULE_COLUMNS};
use stoker_engine::schedule::{FireRecord, ScheduleRecord, FIRE_LOG_KEEP};
use stoker_engine::storage::flow_storage::ScheduleStorage;

use crate::flow::*;

/// The statements of one fire of a schedule (see [`fire::fire`]). A
/// concurrent fire waits for the schedule's row at the fence and then finds
/// it moved.
impl FireSteps for Tx<'_> {
    type Error = PgError;

    fn schedule(&mut self, id: i64) -> PgResult<Option<ScheduleRecord>> {
        get_schedule_in(self, id)
    }

    fn move_fire(&mut self, id: i64, fire_ms: i64, next_fire_ms: Option<i64>) -> PgResult<bool> {
        let moved = self.execute(
            "UPDATE schedules SET next_fire_ms = $3, last_fire_ms = $2 \
             WHERE id = $1 AND next_fire_ms = $2 AND paused = 0",
            &[&id, &fire_ms, &next_fire_ms],
        )?;
        Ok(moved > 0)
    }

    fn enqueue(&mut self, job: &NewJob, now_ms: i64) -> PgResult<(i64, bool)> {
        insert_job(self, job, now_ms)
    }

    fn count_enqueued(&mut self, id: i64) -> PgResult<()> {
        self.execute(
            "UPDATE schedules SET enqueued = enqueued + 1 WHERE id = $1",
            &[&id],
        )?;
        Ok(())
    }

    fn record_fire(&mut self, id: i64, fire: &FireLog<'_>) -> PgResult<()> {
        self.execute(
            "INSERT INTO schedule_fires (schedule_id, fire_ms, at_ms, outcome, job_id, missed, owner, message) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &id,
                &fire.fire_ms,
                &fire.at_ms,
                &fire.outcome.as_str(),
                &fire.outcome.job_id(),
                &fire.missed,
                &fire.owner,
                &fire.message,
            ],
        )?;
        self.execute(
            "DELETE FROM schedule_fires WHERE schedule_id = $1 AND id <= \
             (SELECT id FROM schedule_fires WHERE schedule_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
            &[&id, &FIRE_LOG_KEEP],
        )?;
        Ok(())
    }
}

// --- ScheduleStorage ----------------------------------------------------------

pub(crate) fn schedule_from_row(row: &Row) -> PgResult<ScheduleRecord> {
    rows::schedule_from_row(&PgRow(row))
}

pub(crate) fn get_schedule_in(tx: &mut Tx<'_>, id: i64) -> PgResult<Option<ScheduleRecord>> {
    tx.query_opt(
        &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1"),
        &[&id],
    )?
    .as_ref()
    .map(schedule_from_row)
    .transpose()
}

impl ScheduleStorage for PostgresStorage {
    fn schedules(&self) -> Result<Vec<ScheduleRecord>, EngineError> {
        self.read(|tx| {
            tx.query(
                &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY id"),
                &[],
            )?
            .iter()
            .map(schedule_from_row)
            .collect()
        })
    }

    fn get_schedule(&self, id: i64) -> Result<ScheduleRecord, EngineError> {
        self.read(|tx| Ok(get_schedule_in(tx, id)?.ok_or(EngineError::ScheduleNotFound(id))?))
    }

    fn set_schedule_paused(&self, id: i64, paused: bool) -> Result<(), EngineError> {
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE schedules SET paused = $2 WHERE id = $1",
                &[&id, &i64::from(paused)],
            )?;
            if changed == 0 {
                return Err(EngineError::ScheduleNotFound(id).into());
            }
            Ok(())
        })
    }

    fn delete_schedule(&self, id: i64) -> Result<bool, EngineError> {
        self.write(|tx| {
            tx.execute("DELETE FROM schedule_fires WHERE schedule_id = $1", &[&id])?;
            let deleted = tx.execute("DELETE FROM schedules WHERE id = $1", &[&id])?;
            Ok(deleted > 0)
        })
    }

    fn due_schedules(&self, limit: usize, now_ms: i64) -> Result<Vec<ScheduleRecord>, EngineError> {
        self.read(|tx| {
            tx.query(
                &format!(
                    "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE paused = 0 AND next_fire_ms IS NOT NULL \
                     AND next_fire_ms <= $1 ORDER BY next_fire_ms LIMIT $2"
                ),
                &[&now_ms, &sql_count(limit)],
            )?
            .iter()
            .map(schedule_from_row)
            .collect()
        })
    }

    fn schedule_fires(&self, id: i64, limit: usize) -> Result<Vec<FireRecord>, EngineError> {
        self.read(|tx| {
            tx.query(
                &format!(
                    "SELECT {FIRE_COLUMNS} FROM schedule_fires WHERE schedule_id = $1 ORDER BY id DESC LIMIT $2"
                ),
                &[&id, &sql_count(limit)],
            )?
            .iter()
            .map(|row| fire_from_row(&PgRow(row)))
            .collect()
        })
    }

    fn next_fire_ms(&self) -> Result<Option<i64>, EngineError> {
        self.read(|tx| {
            Ok(tx
                .query_one(
                    "SELECT min(next_fire_ms) FROM schedules WHERE paused = 0 AND next_fire_ms IS NOT NULL",
                    &[],
                )?
                .try_get(0)?)
        })
    }
}
