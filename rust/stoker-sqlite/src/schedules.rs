//! [`ScheduleStorage`] for [`SqliteStorage`]: schedules and their fires
//! (written once in the engine's `decide::fire`, over the [`FireSteps`]
//! here).

use crate::columns::SqlRow;
use crate::{sql_limit, SqlError, SqlResult, SqliteStorage};
use rusqlite::{params, OptionalExtension, Row, Transaction};
use stoker_engine::decide::fire::{FireLog, FireSteps};
use stoker_engine::error::EngineError;
use stoker_engine::model::NewJob;
use stoker_engine::rows::{self, fire_from_row, FIRE_COLUMNS, SCHEDULE_COLUMNS};
use stoker_engine::schedule::{FireRecord, ScheduleRecord, FIRE_LOG_KEEP};
use stoker_engine::storage::flow_storage::ScheduleStorage;

use crate::flow::*;
use crate::transitions::Steps;

/// The statements of one fire of a schedule (see [`fire::fire`]).
impl FireSteps for Steps<'_, '_> {
    type Error = SqlError;

    fn schedule(&mut self, id: i64) -> SqlResult<Option<ScheduleRecord>> {
        get_schedule_in(self.0, id)
    }

    fn move_fire(&mut self, id: i64, fire_ms: i64, next_fire_ms: Option<i64>) -> SqlResult<bool> {
        let moved = self
            .0
            .prepare_cached(
                "UPDATE schedules SET next_fire_ms = ?3, last_fire_ms = ?2 \
                 WHERE id = ?1 AND next_fire_ms = ?2 AND paused = 0",
            )?
            .execute(params![id, fire_ms, next_fire_ms])?;
        Ok(moved > 0)
    }

    fn enqueue(&mut self, job: &NewJob, now_ms: i64) -> SqlResult<(i64, bool)> {
        insert_job(self.0, job, now_ms)
    }

    fn count_enqueued(&mut self, id: i64) -> SqlResult<()> {
        self.0
            .prepare_cached("UPDATE schedules SET enqueued = enqueued + 1 WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    }

    fn record_fire(&mut self, id: i64, fire: &FireLog<'_>) -> SqlResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO schedule_fires (schedule_id, fire_ms, at_ms, outcome, job_id, missed, owner, message) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                id,
                fire.fire_ms,
                fire.at_ms,
                fire.outcome.as_str(),
                fire.outcome.job_id(),
                fire.missed,
                fire.owner,
                fire.message
            ])?;
        self.0
            .prepare_cached(
                "DELETE FROM schedule_fires WHERE schedule_id = ?1 AND id <= \
                 (SELECT id FROM schedule_fires WHERE schedule_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            )?
            .execute(params![id, FIRE_LOG_KEEP])?;
        Ok(())
    }
}

// --- ScheduleStorage ----------------------------------------------------------

pub(crate) fn schedule_from_row(row: &Row<'_>) -> rusqlite::Result<ScheduleRecord> {
    rows::schedule_from_row(&SqlRow(row))
}

pub(crate) fn get_schedule_in(tx: &Transaction<'_>, id: i64) -> SqlResult<Option<ScheduleRecord>> {
    Ok(tx
        .prepare_cached(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ?1"
        ))?
        .query_row([id], schedule_from_row)
        .optional()?)
}

impl ScheduleStorage for SqliteStorage {
    fn schedules(&self) -> Result<Vec<ScheduleRecord>, EngineError> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY id"
            ))?;
            let rows = stmt.query_map([], schedule_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn get_schedule(&self, id: i64) -> Result<ScheduleRecord, EngineError> {
        self.read(|tx| get_schedule_in(tx, id)?.ok_or(EngineError::ScheduleNotFound(id).into()))
    }

    fn set_schedule_paused(&self, id: i64, paused: bool) -> Result<(), EngineError> {
        self.write(|tx| {
            let changed = tx
                .prepare_cached("UPDATE schedules SET paused = ?2 WHERE id = ?1")?
                .execute(params![id, i64::from(paused)])?;
            if changed == 0 {
                return Err(EngineError::ScheduleNotFound(id).into());
            }
            Ok(())
        })
    }

    fn delete_schedule(&self, id: i64) -> Result<bool, EngineError> {
        self.write(|tx| {
            tx.prepare_cached("DELETE FROM schedule_fires WHERE schedule_id = ?1")?
                .execute([id])?;
            let deleted = tx
                .prepare_cached("DELETE FROM schedules WHERE id = ?1")?
                .execute([id])?;
            Ok(deleted > 0)
        })
    }

    fn due_schedules(&self, limit: usize, now_ms: i64) -> Result<Vec<ScheduleRecord>, EngineError> {
        self.read(|tx| {
            let ids: Vec<i64> = {
                let mut stmt = tx.prepare_cached(DUE_SCHEDULES_SQL)?;
                let rows = stmt.query_map(params![now_ms, sql_limit(limit)], |row| row.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            let mut due = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(schedule) = get_schedule_in(tx, id)? {
                    due.push(schedule);
                }
            }
            Ok(due)
        })
    }

    fn schedule_fires(&self, id: i64, limit: usize) -> Result<Vec<FireRecord>, EngineError> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {FIRE_COLUMNS} FROM schedule_fires WHERE schedule_id = ?1 ORDER BY id DESC LIMIT ?2"
            ))?;
            let rows =
                stmt.query_map(params![id, sql_limit(limit)], |row| fire_from_row(&SqlRow(row)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn next_fire_ms(&self) -> Result<Option<i64>, EngineError> {
        self.read(|tx| {
            Ok(tx
                .prepare_cached(NEXT_FIRE_SQL)?
                .query_row([], |row| row.get(0))
                .optional()?)
        })
    }
}
