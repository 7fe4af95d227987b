//! The value classes of `stoker._core`: read-only wrappers over the engine's
//! model types.

use std::borrow::Cow;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use stoker_engine::model;

use crate::errors::OrRaise;
use crate::records::record_class;

// The defaults of `NewJob.__init__` are written as literals so that Python
// shows them in the signature (PyO3 renders other expressions as `...`); these
// checks keep them equal to the engine's defaults.
const _: () = assert!(model::NewJob::DEFAULT_MAX_RETRIES == 0);
const _: () = assert!(model::NewJob::DEFAULT_MAX_CRASHES == 1);
const _: () = assert!(model::NewJob::DEFAULT_BACKOFF_BASE_MS == 1000);
const _: () = assert!(model::NewJob::DEFAULT_BACKOFF_CAP_MS == 300_000);
const _: () = assert!(matches!(
    model::NewJob::DEFAULT_QUEUE.as_bytes(),
    b"default"
));

/// A job to enqueue: what to run and how to treat its attempts.
#[pyclass(frozen, module = "stoker._core")]
pub struct NewJob {
    pub(crate) inner: model::NewJob,
}

record_class! {
    NewJob {
        str task_name,
        str queue,
        copy priority: i64,
    }
    {
        #[new]
        #[pyo3(signature = (
            task_name,
            payload,
            *,
            queue = "default",
            priority = 0,
            max_retries = 0,
            max_crashes = 1,
            backoff_base_ms = 1000,
            backoff_cap_ms = 300000,
            jitter = 0.0,
            timeout_ms = None,
            delay_ms = 0,
            eta_ms = None,
            result_ttl_ms = None,
            labels = None,
            unique_key = None,
            expires_after_ms = None,
            depends_on = None,
            fail_when_limited = false,
        ))]
        #[allow(clippy::too_many_arguments)]
        fn new(
            py: Python<'_>,
            task_name: String,
            payload: Cow<'_, [u8]>,
            queue: &str,
            priority: i64,
            max_retries: i64,
            max_crashes: i64,
            backoff_base_ms: i64,
            backoff_cap_ms: i64,
            jitter: f64,
            timeout_ms: Option<i64>,
            delay_ms: i64,
            eta_ms: Option<i64>,
            result_ttl_ms: Option<i64>,
            labels: Option<String>,
            unique_key: Option<String>,
            expires_after_ms: Option<i64>,
            depends_on: Option<Vec<i64>>,
            fail_when_limited: bool,
        ) -> PyResult<Self> {
            let inner = model::NewJob {
                task_name,
                payload: payload.into_owned(),
                queue: queue.to_owned(),
                priority,
                max_retries,
                max_crashes,
                backoff_base_ms,
                backoff_cap_ms,
                jitter,
                timeout_ms,
                delay_ms,
                eta_ms,
                result_ttl_ms,
                labels,
                unique_key,
                expires_after_ms,
                depends_on: depends_on.unwrap_or_default(),
                fail_when_limited,
            };
            inner.validate().or_raise(py)?;
            Ok(Self { inner })
        }

        fn __repr__(&self) -> String {
            format!(
                "NewJob(task_name={:?}, queue={:?}, priority={}, payload=<{} bytes>)",
                self.inner.task_name,
                self.inner.queue,
                self.inner.priority,
                self.inner.payload.len()
            )
        }
    }
}

/// A job handed to one supervisor: run it and report with ``token``.
#[pyclass(frozen, module = "stoker._core")]
pub struct ClaimedJob {
    pub(crate) inner: model::ClaimedJob,
}

record_class! {
    ClaimedJob {
        copy id: i64,
        /// The fencing token: outcomes carrying another token are refused.
        copy token: i64,
        /// 1 for the first run, counting every claim of this job.
        copy attempt: i64,
        str task_name,
        str queue,
        copy timeout_ms: Option<i64>,
        copy lease_deadline_ms: i64,
        opt_str labels,
    }
    {
        #[getter]
        fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
            PyBytes::new(py, &self.inner.payload)
        }

        fn __repr__(&self) -> String {
            format!(
                "ClaimedJob(id={}, token={}, task_name={:?}, queue={:?}, lease_deadline_ms={})",
                self.inner.id,
                self.inner.token,
                self.inner.task_name,
                self.inner.queue,
                self.inner.lease_deadline_ms
            )
        }
    }
}

/// A snapshot of one job row.
#[pyclass(frozen, module = "stoker._core")]
pub struct JobRecord {
    pub(crate) inner: model::JobRecord,
}

record_class! {
    JobRecord {
        copy id: i64,
        str task_name,
        str queue,
        copy priority: i64,
        /// How many times the job was claimed.
        copy attempt: i64,
        /// Failed attempts counted against ``max_retries``.
        copy failures: i64,
        /// Lost attempts counted against ``max_crashes``.
        copy crashes: i64,
        copy max_retries: i64,
        copy max_crashes: i64,
        copy backoff_base_ms: i64,
        copy backoff_cap_ms: i64,
        copy jitter: f64,
        copy timeout_ms: Option<i64>,
        copy result_ttl_ms: Option<i64>,
        copy created_ms: i64,
        copy eta_ms: i64,
        /// When the latest attempt was claimed.
        copy started_ms: Option<i64>,
        copy finished_ms: Option<i64>,
        opt_str lease_owner,
        copy lease_deadline_ms: Option<i64>,
        copy cancel_requested: bool,
        copy result_expires_ms: Option<i64>,
        /// For a replay, the id of the dead job it was made from.
        copy replayed_from: Option<i64>,
        opt_str labels,
        opt_str progress,
        opt_str usage,
        opt_str unique_key,
        /// When the job expires if it has not started by then.
        copy expires_ms: Option<i64>,
    }
    {
        /// One of pending, scheduled, running, complete, dead, cancelled, expired, waiting.
        #[getter]
        fn status(&self) -> &'static str {
            self.inner.status.as_str()
        }

        #[getter]
        fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
            PyBytes::new(py, &self.inner.payload)
        }

        #[getter]
        fn result<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
            self.inner
                .result
                .as_deref()
                .map(|result| PyBytes::new(py, result))
        }

        fn __repr__(&self) -> String {
            format!(
                "JobRecord(id={}, task_name={:?}, queue={:?}, status={:?}, attempt={})",
                self.inner.id,
                self.inner.task_name,
                self.inner.queue,
                self.inner.status.as_str(),
                self.inner.attempt
            )
        }
    }
}

/// One failed attempt in a job's error history.
#[pyclass(frozen, module = "stoker._core")]
pub struct ErrorRecord {
    pub(crate) inner: model::ErrorRecord,
}

record_class! {
    ErrorRecord {
        copy id: i64,
        copy job_id: i64,
        copy attempt: i64,
        /// error, timeout, crash, or lease_expired.
        str kind,
        /// Qualified name of the exception type, e.g. ``builtins.ValueError``.
        str exc_type,
        str message,
        str traceback,
        copy failed_ms: i64,
        str worker,
        opt_str usage,
    }
    {
        /// The pickled exception, when it could be pickled.
        #[getter]
        fn exc_pickle<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
            self.inner
                .exc_pickle
                .as_deref()
                .map(|pickle| PyBytes::new(py, pickle))
        }

        fn __repr__(&self) -> String {
            format!(
                "ErrorRecord(job_id={}, attempt={}, kind={:?}, exc_type={:?}, message={:?})",
                self.inner.job_id,
                self.inner.attempt,
                self.inner.kind,
                self.inner.exc_type,
                self.inner.message
            )
        }
    }
}

/// An outcome that was refused because its fencing token was stale.
#[pyclass(frozen, module = "stoker._core")]
pub struct StaleOutcome {
    pub(crate) inner: model::StaleOutcome,
}

record_class! {
    StaleOutcome {
        copy job_id: i64,
        copy token: i64,
        str owner,
        /// What was refused: complete, fail, cancel, requeue, heartbeat.
        str outcome,
        copy at_ms: i64,
    }
    {
        fn __repr__(&self) -> String {
            format!(
                "StaleOutcome(job_id={}, token={}, owner={:?}, outcome={:?}, at_ms={})",
                self.inner.job_id,
                self.inner.token,
                self.inner.owner,
                self.inner.outcome,
                self.inner.at_ms
            )
        }
    }
}
