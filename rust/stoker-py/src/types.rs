//! The value classes of `stoker._core`: read-only wrappers over the engine's
//! model types.

use std::borrow::Cow;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use stoker_engine::model;

use crate::errors::OrRaise;

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

#[pymethods]
impl NewJob {
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

    #[getter]
    fn task_name(&self) -> &str {
        &self.inner.task_name
    }

    #[getter]
    fn queue(&self) -> &str {
        &self.inner.queue
    }

    #[getter]
    fn priority(&self) -> i64 {
        self.inner.priority
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

/// A job handed to one supervisor: run it and report with ``token``.
#[pyclass(frozen, module = "stoker._core")]
pub struct ClaimedJob {
    pub(crate) inner: model::ClaimedJob,
}

#[pymethods]
impl ClaimedJob {
    #[getter]
    fn id(&self) -> i64 {
        self.inner.id
    }

    /// The fencing token: outcomes carrying another token are refused.
    #[getter]
    fn token(&self) -> i64 {
        self.inner.token
    }

    /// 1 for the first run, counting every claim of this job.
    #[getter]
    fn attempt(&self) -> i64 {
        self.inner.attempt
    }

    #[getter]
    fn task_name(&self) -> &str {
        &self.inner.task_name
    }

    #[getter]
    fn queue(&self) -> &str {
        &self.inner.queue
    }

    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.payload)
    }

    #[getter]
    fn timeout_ms(&self) -> Option<i64> {
        self.inner.timeout_ms
    }

    #[getter]
    fn lease_deadline_ms(&self) -> i64 {
        self.inner.lease_deadline_ms
    }

    #[getter]
    fn labels(&self) -> Option<&str> {
        self.inner.labels.as_deref()
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

/// A snapshot of one job row.
#[pyclass(frozen, module = "stoker._core")]
pub struct JobRecord {
    pub(crate) inner: model::JobRecord,
}

#[pymethods]
impl JobRecord {
    #[getter]
    fn id(&self) -> i64 {
        self.inner.id
    }

    #[getter]
    fn task_name(&self) -> &str {
        &self.inner.task_name
    }

    #[getter]
    fn queue(&self) -> &str {
        &self.inner.queue
    }

    #[getter]
    fn priority(&self) -> i64 {
        self.inner.priority
    }

    /// One of pending, scheduled, running, complete, dead, cancelled, expired, waiting.
    #[getter]
    fn status(&self) -> &'static str {
        self.inner.status.as_str()
    }

    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.payload)
    }

    /// How many times the job was claimed.
    #[getter]
    fn attempt(&self) -> i64 {
        self.inner.attempt
    }

    /// Failed attempts counted against ``max_retries``.
    #[getter]
    fn failures(&self) -> i64 {
        self.inner.failures
    }

    /// Lost attempts counted against ``max_crashes``.
    #[getter]
    fn crashes(&self) -> i64 {
        self.inner.crashes
    }

    #[getter]
    fn max_retries(&self) -> i64 {
        self.inner.max_retries
    }

    #[getter]
    fn max_crashes(&self) -> i64 {
        self.inner.max_crashes
    }

    #[getter]
    fn backoff_base_ms(&self) -> i64 {
        self.inner.backoff_base_ms
    }

    #[getter]
    fn backoff_cap_ms(&self) -> i64 {
        self.inner.backoff_cap_ms
    }

    #[getter]
    fn jitter(&self) -> f64 {
        self.inner.jitter
    }

    #[getter]
    fn timeout_ms(&self) -> Option<i64> {
        self.inner.timeout_ms
    }

    #[getter]
    fn result_ttl_ms(&self) -> Option<i64> {
        self.inner.result_ttl_ms
    }

    #[getter]
    fn created_ms(&self) -> i64 {
        self.inner.created_ms
    }

    #[getter]
    fn eta_ms(&self) -> i64 {
        self.inner.eta_ms
    }

    /// When the latest attempt was claimed.
    #[getter]
    fn started_ms(&self) -> Option<i64> {
        self.inner.started_ms
    }

    #[getter]
    fn finished_ms(&self) -> Option<i64> {
        self.inner.finished_ms
    }

    #[getter]
    fn lease_owner(&self) -> Option<&str> {
        self.inner.lease_owner.as_deref()
    }

    #[getter]
    fn lease_deadline_ms(&self) -> Option<i64> {
        self.inner.lease_deadline_ms
    }

    #[getter]
    fn cancel_requested(&self) -> bool {
        self.inner.cancel_requested
    }

    #[getter]
    fn result<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.inner
            .result
            .as_deref()
            .map(|result| PyBytes::new(py, result))
    }

    #[getter]
    fn result_expires_ms(&self) -> Option<i64> {
        self.inner.result_expires_ms
    }

    /// For a replay, the id of the dead job it was made from.
    #[getter]
    fn replayed_from(&self) -> Option<i64> {
        self.inner.replayed_from
    }

    #[getter]
    fn labels(&self) -> Option<&str> {
        self.inner.labels.as_deref()
    }

    #[getter]
    fn progress(&self) -> Option<&str> {
        self.inner.progress.as_deref()
    }

    #[getter]
    fn usage(&self) -> Option<&str> {
        self.inner.usage.as_deref()
    }

    #[getter]
    fn unique_key(&self) -> Option<&str> {
        self.inner.unique_key.as_deref()
    }

    /// When the job expires if it has not started by then.
    #[getter]
    fn expires_ms(&self) -> Option<i64> {
        self.inner.expires_ms
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

/// One failed attempt in a job's error history.
#[pyclass(frozen, module = "stoker._core")]
pub struct ErrorRecord {
    pub(crate) inner: model::ErrorRecord,
}

#[pymethods]
impl ErrorRecord {
    #[getter]
    fn id(&self) -> i64 {
        self.inner.id
    }

    #[getter]
    fn job_id(&self) -> i64 {
        self.inner.job_id
    }

    #[getter]
    fn attempt(&self) -> i64 {
        self.inner.attempt
    }

    /// error, timeout, crash, or lease_expired.
    #[getter]
    fn kind(&self) -> &str {
        &self.inner.kind
    }

    /// Qualified name of the exception type, e.g. ``builtins.ValueError``.
    #[getter]
    fn exc_type(&self) -> &str {
        &self.inner.exc_type
    }

    #[getter]
    fn message(&self) -> &str {
        &self.inner.message
    }

    #[getter]
    fn traceback(&self) -> &str {
        &self.inner.traceback
    }

    /// The pickled exception, when it could be pickled.
    #[getter]
    fn exc_pickle<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.inner
            .exc_pickle
            .as_deref()
            .map(|pickle| PyBytes::new(py, pickle))
    }

    #[getter]
    fn failed_ms(&self) -> i64 {
        self.inner.failed_ms
    }

    #[getter]
    fn worker(&self) -> &str {
        &self.inner.worker
    }

    #[getter]
    fn usage(&self) -> Option<&str> {
        self.inner.usage.as_deref()
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

/// An outcome that was refused because its fencing token was stale.
#[pyclass(frozen, module = "stoker._core")]
pub struct StaleOutcome {
    pub(crate) inner: model::StaleOutcome,
}

#[pymethods]
impl StaleOutcome {
    #[getter]
    fn job_id(&self) -> i64 {
        self.inner.job_id
    }

    #[getter]
    fn token(&self) -> i64 {
        self.inner.token
    }

    #[getter]
    fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// What was refused: complete, fail, cancel, requeue, heartbeat.
    #[getter]
    fn outcome(&self) -> &str {
        &self.inner.outcome
    }

    #[getter]
    fn at_ms(&self) -> i64 {
        self.inner.at_ms
    }

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
