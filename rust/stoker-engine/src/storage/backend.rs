//! The job operations that read the same in every backend, written once:
//! [`Transitions`] for any [`Backend`], over the statements its transaction
//! offers ([`JobSteps`]). A backend keeps its SQL, its connections and
//! locking, and the operations whose shape its driver decides (the batched
//! heartbeat of PostgreSQL, the send log of SQLite).

use crate::decide::attempt::{self, give_back_each, Attempt, AttemptSteps, ExpiredLease};
use crate::decide::fire::{self, FireSteps};
use crate::decide::{purgeable, Purge};
use crate::error::EngineError;
use crate::model::{
    CancelOutcome, ClaimedJob, Completion, ErrorRecord, FailOutcome, FailureReport, NewJob, Status,
};
use crate::schedule::{FireOutcome, NewSchedule, Planner, ScheduleRecord, Verdict};
use crate::storage::{ClaimRequest, Jitter, Transitions};

/// A store's transactions: each runs `f` in one transaction and commits it
/// (or runs it again from the start where the store retries lost races).
pub trait Backend: Send + Sync {
    /// The error of the store's own steps.
    type Error: From<EngineError>;
    /// One transaction, with the statements the shared operations use.
    type Tx<'t>: JobSteps<Error = Self::Error> + FireSteps<Error = Self::Error>;

    /// Runs `f` in a transaction that writes.
    fn write_tx<T>(
        &self,
        f: impl FnMut(&mut Self::Tx<'_>) -> Result<T, Self::Error>,
    ) -> Result<T, EngineError>;

    /// Runs `f` in a transaction that only reads.
    fn read_tx<T>(
        &self,
        f: impl FnMut(&mut Self::Tx<'_>) -> Result<T, Self::Error>,
    ) -> Result<T, EngineError>;
}

/// Which give-back statement to run (see [`Transitions::return_unstarted`]
/// and [`ExpiredLease`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveBack {
    /// The job is marked held by its supervisor ([`ClaimRequest::held`]).
    Held,
    /// The job's lease has expired (no worker of it started it).
    Unstarted,
}

/// Where [`JobSteps::store_schedule`] stores a schedule: over the row `id`
/// (a new row if `None`, created at `now_ms`), with its next fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleSlot {
    pub id: Option<i64>,
    pub next_fire_ms: Option<i64>,
    pub now_ms: i64,
}

/// The statements of the shared job operations, each run inside the
/// caller's transaction.
pub trait JobSteps: AttemptSteps {
    /// Stores a new job (and what it depends on); its id.
    fn insert_job(&mut self, job: &NewJob, now_ms: i64) -> Result<i64, Self::Error>;

    /// The body of [`Transitions::claim`]: promote, expire, pick and lease.
    fn claim(
        &mut self,
        request: &ClaimRequest<'_>,
        now_ms: i64,
    ) -> Result<Vec<ClaimedJob>, Self::Error>;

    /// The body of [`Transitions::complete_many`].
    fn complete(
        &mut self,
        completions: &[Completion],
        now_ms: i64,
    ) -> Result<Vec<bool>, Self::Error>;

    /// Marks (`held`) or unmarks the running jobs `(id, token)` of `owner`.
    fn mark_held(
        &mut self,
        jobs: &[(i64, i64)],
        owner: &str,
        held: bool,
    ) -> Result<(), Self::Error>;

    /// The job's status, its row locked where writers race; `None` if no
    /// such job.
    fn status(&mut self, job_id: i64) -> Result<Option<Status>, Self::Error>;

    /// Ends a job that has not started as cancelled.
    fn cancel_unstarted(&mut self, job_id: i64, now_ms: i64) -> Result<(), Self::Error>;

    /// Asks the supervisor running the job to stop it.
    fn request_cancel(&mut self, job_id: i64) -> Result<(), Self::Error>;

    /// Ends the running attempt as cancelled; whether its token was current.
    fn end_cancelled(&mut self, at: Attempt) -> Result<bool, Self::Error>;

    /// Stores the running attempt's progress; whether its token was current.
    fn store_progress(&mut self, at: Attempt, progress: &str) -> Result<bool, Self::Error>;

    /// Puts the running attempt back to pending (cancelled if a cancel was
    /// requested), taking the attempt back when `release`; the new status,
    /// `None` if the token was not current.
    fn put_back(&mut self, at: Attempt, release: bool) -> Result<Option<Status>, Self::Error>;

    /// Runs the give-back statement `which` on the attempt; the new status,
    /// `None` if it did not apply.
    fn give_back(&mut self, at: Attempt, which: GiveBack) -> Result<Option<Status>, Self::Error>;

    /// Resolves what a job that finished as `status` does to its dependents.
    fn on_finished(&mut self, job_id: i64, status: Status, now_ms: i64) -> Result<(), Self::Error>;

    /// Records an outcome refused for its stale token, naming the job's
    /// current lease owner; a missing job is an error.
    fn refuse_stale(&mut self, at: Attempt, outcome: &str) -> Result<(), Self::Error>;

    /// Up to `limit` running jobs whose lease (or supervisor) expired before
    /// `now_ms`, locked for the reaper.
    fn expired(&mut self, limit: usize, now_ms: i64) -> Result<Vec<ExpiredLease>, Self::Error>;

    /// The job's error history, oldest first; `None` if no such job.
    fn error_records(&mut self, job_id: i64) -> Result<Option<Vec<ErrorRecord>>, Self::Error>;

    /// `(status code, count)` of the statuses that have jobs.
    fn status_counts(&mut self) -> Result<Vec<(i64, i64)>, Self::Error>;

    /// Stores a new pending job with the task, payload and options of the
    /// (dead) job `job_id`; its id.
    fn copy_job(&mut self, job_id: i64, now_ms: i64) -> Result<i64, Self::Error>;

    /// The body of [`Transitions::purge_jobs`], the arguments checked.
    fn purge(&mut self, purge: &Purge<'_>) -> Result<usize, Self::Error>;

    /// Ends as expired up to `limit` not-yet-started jobs whose expiry came;
    /// their ids.
    fn expire(&mut self, limit: usize, now_ms: i64) -> Result<Vec<i64>, Self::Error>;

    /// The jobs `job_id` depends on, in order, with their statuses; `None`
    /// if no such job.
    fn dependency_statuses(
        &mut self,
        job_id: i64,
    ) -> Result<Option<Vec<(i64, Status)>>, Self::Error>;

    /// The schedule named `name`, its row locked where writers race.
    fn schedule_named(&mut self, name: &str) -> Result<Option<ScheduleRecord>, Self::Error>;

    /// Writes `schedule` to its slot; its id.
    fn store_schedule(
        &mut self,
        schedule: &NewSchedule,
        slot: ScheduleSlot,
    ) -> Result<i64, Self::Error>;

    /// The body of [`Transitions::purge_expired_results`].
    fn purge_retention(&mut self, limit: usize, now_ms: i64) -> Result<usize, Self::Error>;
}

/// Gives the attempt back with the statement `which`: pending again with
/// nothing counted, or cancelled (its dependents resolved) if a cancel was
/// requested; `None` if the statement did not apply.
pub fn give_back<T: JobSteps>(
    tx: &mut T,
    at: Attempt,
    which: GiveBack,
) -> Result<Option<FailOutcome>, T::Error> {
    Ok(match tx.give_back(at, which)? {
        None => None,
        Some(Status::Cancelled) => {
            tx.on_finished(at.job_id, Status::Cancelled, at.now_ms)?;
            Some(FailOutcome::Cancelled)
        }
        Some(_) => Some(FailOutcome::Returned),
    })
}

fn put_back<T: JobSteps>(tx: &mut T, at: Attempt, release: bool) -> Result<bool, T::Error> {
    let status = tx.put_back(at, release)?;
    match status {
        None => tx.refuse_stale(at, if release { "release" } else { "requeue" })?,
        Some(Status::Cancelled) => tx.on_finished(at.job_id, Status::Cancelled, at.now_ms)?,
        Some(_) => {}
    }
    Ok(status.is_some())
}

fn at(job_id: i64, token: i64, now_ms: i64) -> Attempt {
    Attempt {
        job_id,
        token,
        now_ms,
    }
}

impl<B: Backend> Transitions for B {
    fn enqueue(&self, jobs: &[NewJob], now_ms: i64) -> Result<Vec<i64>, EngineError> {
        self.write_tx(|tx| {
            let mut ids = Vec::with_capacity(jobs.len());
            for job in jobs {
                ids.push(tx.insert_job(job, now_ms)?);
            }
            Ok(ids)
        })
    }

    fn claim(
        &self,
        queues: &[String],
        limit: usize,
        owner: &str,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<ClaimedJob>, EngineError> {
        if limit == 0 || queues.is_empty() {
            return Ok(Vec::new());
        }
        let request = ClaimRequest {
            queues,
            limit,
            owner,
            lease_ms,
            held: &[],
            sent: &[],
        };
        self.write_tx(|tx| tx.claim(&request, now_ms))
    }

    fn complete_many(
        &self,
        completions: &[Completion],
        now_ms: i64,
    ) -> Result<Vec<bool>, EngineError> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        self.write_tx(|tx| tx.complete(completions, now_ms))
    }

    fn complete_and_claim(
        &self,
        completions: &[Completion],
        claim: &ClaimRequest<'_>,
        now_ms: i64,
    ) -> Result<(Vec<bool>, Vec<ClaimedJob>), EngineError> {
        self.write_tx(|tx| {
            // Unmarked first: a job may be in both lists only as sent.
            tx.mark_held(claim.sent, claim.owner, false)?;
            tx.mark_held(claim.held, claim.owner, true)?;
            let applied = tx.complete(completions, now_ms)?;
            let claimed = tx.claim(claim, now_ms)?;
            Ok((applied, claimed))
        })
    }

    fn fail(
        &self,
        job_id: i64,
        token: i64,
        report: &FailureReport,
        jitter: Jitter<'_>,
        now_ms: i64,
    ) -> Result<FailOutcome, EngineError> {
        self.write_tx(|tx| attempt::fail(tx, job_id, token, report, &mut *jitter, now_ms))
    }

    fn cancel(&self, job_id: i64, now_ms: i64) -> Result<CancelOutcome, EngineError> {
        self.write_tx(|tx| {
            let status = tx.status(job_id)?.ok_or(EngineError::NotFound(job_id))?;
            match status {
                Status::Pending | Status::Scheduled | Status::Waiting => {
                    tx.cancel_unstarted(job_id, now_ms)?;
                    tx.on_finished(job_id, Status::Cancelled, now_ms)?;
                    Ok(CancelOutcome::Cancelled)
                }
                Status::Running => {
                    tx.request_cancel(job_id)?;
                    Ok(CancelOutcome::Requested)
                }
                finished => Ok(CancelOutcome::Finished(finished)),
            }
        })
    }

    fn finish_cancelled(&self, job_id: i64, token: i64, now_ms: i64) -> Result<bool, EngineError> {
        let at = at(job_id, token, now_ms);
        self.write_tx(|tx| {
            let ended = tx.end_cancelled(at)?;
            if ended {
                tx.on_finished(job_id, Status::Cancelled, now_ms)?;
            } else {
                tx.refuse_stale(at, "cancel")?;
            }
            Ok(ended)
        })
    }

    fn requeue(&self, job_id: i64, token: i64, now_ms: i64) -> Result<bool, EngineError> {
        self.write_tx(|tx| put_back(tx, at(job_id, token, now_ms), false))
    }

    fn release(&self, job_id: i64, token: i64, now_ms: i64) -> Result<bool, EngineError> {
        self.write_tx(|tx| put_back(tx, at(job_id, token, now_ms), true))
    }

    fn reap_expired(
        &self,
        limit: usize,
        jitter: Jitter<'_>,
        now_ms: i64,
    ) -> Result<Vec<(i64, FailOutcome)>, EngineError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.write_tx(|tx| {
            let expired = tx.expired(limit, now_ms)?;
            attempt::reap(tx, expired, &mut *jitter, now_ms)
        })
    }

    fn return_unstarted(
        &self,
        jobs: &[(i64, i64)],
        now_ms: i64,
    ) -> Result<Vec<(i64, FailOutcome)>, EngineError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.write_tx(|tx| {
            give_back_each(jobs, |job_id, token| {
                give_back(tx, at(job_id, token, now_ms), GiveBack::Unstarted)
            })
        })
    }

    fn errors(&self, job_id: i64) -> Result<Vec<ErrorRecord>, EngineError> {
        self.read_tx(|tx| {
            Ok(tx
                .error_records(job_id)?
                .ok_or(EngineError::NotFound(job_id))?)
        })
    }

    fn stats(&self) -> Result<Vec<(Status, i64)>, EngineError> {
        // This counts every row, so its cost grows with the table; it serves
        // dashboards and tests, never the claim path.
        let found = self.read_tx(|tx| tx.status_counts())?;
        let mut counts: Vec<(Status, i64)> =
            Status::ALL.iter().map(|&status| (status, 0)).collect();
        for (code, count) in found {
            let status = Status::from_code(code).ok_or_else(|| {
                EngineError::Storage(format!(
                    "the database holds an unknown job status code {code}"
                ))
            })?;
            if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == status) {
                slot.1 = count;
            }
        }
        Ok(counts)
    }

    fn replay(&self, job_id: i64, now_ms: i64) -> Result<i64, EngineError> {
        self.write_tx(|tx| {
            let status = tx.status(job_id)?.ok_or(EngineError::NotFound(job_id))?;
            if status != Status::Dead {
                return Err(EngineError::JobState {
                    job_id,
                    status: status.as_str().to_owned(),
                    operation: "replay".to_owned(),
                }
                .into());
            }
            tx.copy_job(job_id, now_ms)
        })
    }

    fn set_progress(
        &self,
        job_id: i64,
        token: i64,
        progress: &str,
        now_ms: i64,
    ) -> Result<bool, EngineError> {
        let at = at(job_id, token, now_ms);
        self.write_tx(|tx| {
            let stored = tx.store_progress(at, progress)?;
            if !stored {
                tx.refuse_stale(at, "progress")?;
            }
            Ok(stored)
        })
    }

    fn purge_jobs(
        &self,
        statuses: &[Status],
        finished_before_ms: Option<i64>,
        limit: usize,
    ) -> Result<usize, EngineError> {
        if !purgeable(statuses, limit)? {
            return Ok(0);
        }
        let purge = Purge {
            statuses,
            finished_before_ms,
            limit,
        };
        self.write_tx(|tx| tx.purge(&purge))
    }

    fn purge_expired_results(&self, limit: usize, now_ms: i64) -> Result<usize, EngineError> {
        if limit == 0 {
            return Ok(0);
        }
        self.write_tx(|tx| tx.purge_retention(limit, now_ms))
    }

    fn expire_due(&self, limit: usize, now_ms: i64) -> Result<Vec<i64>, EngineError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.write_tx(|tx| tx.expire(limit, now_ms))
    }

    fn dependencies(&self, job_id: i64) -> Result<Vec<(i64, Status)>, EngineError> {
        self.read_tx(|tx| {
            let found = tx.dependency_statuses(job_id)?;
            Ok(found.ok_or(EngineError::NotFound(job_id))?)
        })
    }

    fn fire_schedule(
        &self,
        id: i64,
        fire_ms: i64,
        verdict: &Verdict,
        planner: Planner<'_>,
        owner: &str,
        now_ms: i64,
    ) -> Result<FireOutcome, EngineError> {
        self.write_tx(|tx| fire::fire(tx, id, fire_ms, verdict, planner, owner, now_ms))
    }

    fn create_schedule(
        &self,
        schedule: &NewSchedule,
        first_fire_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<i64, EngineError> {
        self.write_tx(|tx| {
            let existing = match &schedule.name {
                Some(name) => tx.schedule_named(name)?,
                None => None,
            };
            // An update keeps the next fire unless the timing changed.
            let next_fire_ms = match &existing {
                Some(old) if old.spec == schedule.spec => old.next_fire_ms,
                _ => first_fire_ms,
            };
            let slot = ScheduleSlot {
                id: existing.map(|old| old.id),
                next_fire_ms,
                now_ms,
            };
            tx.store_schedule(schedule, slot)
        })
    }
}
