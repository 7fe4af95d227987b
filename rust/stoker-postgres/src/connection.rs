//! Connections: the pool, one transaction on a pooled connection with its
//! cached statements, the retry of a transaction that lost a race, and the
//! errors of the driver.

use crate::*;

/// A failure inside a transaction: the engine's own, or the database's (which
/// may be a lost race worth retrying).
#[derive(Debug)]
pub enum PgError {
    Engine(EngineError),
    Db(postgres::Error),
    /// The transaction could not even begin: nothing was written, so it may
    /// run again on a fresh connection (the pooled one was broken, for
    /// example by a server restart).
    Begin(postgres::Error),
}

impl From<EngineError> for PgError {
    fn from(error: EngineError) -> Self {
        PgError::Engine(error)
    }
}

impl From<postgres::Error> for PgError {
    fn from(error: postgres::Error) -> Self {
        PgError::Db(error)
    }
}

pub type PgResult<T> = Result<T, PgError>;

/// Whether the error is a lost race that a new run of the transaction can win.
pub(crate) fn is_retryable(error: &postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::UNIQUE_VIOLATION
    )
}

/// A connection with its prepared statements.
pub(crate) struct PgConn {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// One transaction on a pooled connection, with cached statements.
pub struct Tx<'a> {
    pub(crate) tx: postgres::Transaction<'a>,
    statements: &'a mut HashMap<String, Statement>,
    /// Set when the transaction made a job runnable; the commit then wakes
    /// idle supervisors.
    pub(crate) wake: bool,
}

pub(crate) type Params<'p> = [&'p (dyn ToSql + Sync)];

impl Tx<'_> {
    fn statement(&mut self, sql: &str) -> PgResult<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.tx.prepare(sql)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    pub(crate) fn query(&mut self, sql: &str, params: &Params<'_>) -> PgResult<Vec<Row>> {
        let statement = self.statement(sql)?;
        Ok(self.tx.query(&statement, params)?)
    }

    pub(crate) fn query_opt(&mut self, sql: &str, params: &Params<'_>) -> PgResult<Option<Row>> {
        let statement = self.statement(sql)?;
        Ok(self.tx.query_opt(&statement, params)?)
    }

    pub(crate) fn query_one(&mut self, sql: &str, params: &Params<'_>) -> PgResult<Row> {
        let statement = self.statement(sql)?;
        Ok(self.tx.query_one(&statement, params)?)
    }

    pub(crate) fn execute(&mut self, sql: &str, params: &Params<'_>) -> PgResult<u64> {
        let statement = self.statement(sql)?;
        Ok(self.tx.execute(&statement, params)?)
    }

    /// Runs statements without parameters or results (DDL), unprepared.
    pub(crate) fn batch(&mut self, sql: &str) -> PgResult<()> {
        Ok(self.tx.batch_execute(sql)?)
    }
}

/// The pool and the identity of the server, shared with the server clock and
/// the listener.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// The URL with its password masked, for messages.
    pub(crate) shown: String,
    /// `host:port` of the server, for messages.
    pub(crate) endpoint: String,
    pub(crate) pool: Mutex<Vec<PgConnBox>>,
}

/// A pooled connection; boxed so that the pool's `Debug` stays short.
pub(crate) struct PgConnBox(Box<PgConn>);

impl std::fmt::Debug for PgConnBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgConn")
    }
}

impl Shared {
    /// Opens a new connection.
    pub(crate) fn connect(&self) -> Result<Client, EngineError> {
        self.config.connect(NoTls).map_err(|error| {
            EngineError::Storage(format!(
                "cannot connect to the PostgreSQL server at {} ({}): {}",
                self.endpoint,
                self.shown,
                describe(&error)
            ))
        })
    }

    fn checkout(&self) -> Result<Box<PgConn>, EngineError> {
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match pooled {
            Some(conn) if !conn.0.client.is_closed() => Ok(conn.0),
            _ => Ok(Box::new(PgConn {
                client: self.connect()?,
                statements: HashMap::new(),
            })),
        }
    }

    fn checkin(&self, conn: Box<PgConn>) {
        if conn.client.is_closed() {
            return;
        }
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOL_IDLE_MAX {
            pool.push(PgConnBox(conn));
        }
    }

    /// The error of a failed database call, in the engine's terms.
    fn engine_error(&self, error: &postgres::Error, attempts: u32) -> EngineError {
        if is_retryable(error) {
            return EngineError::Busy(format!(
                "PostgreSQL at {}: a transaction lost a race with another writer {attempts} times in a row: {}",
                self.endpoint,
                describe(error)
            ));
        }
        if error.is_closed() || error.as_db_error().is_none() {
            return EngineError::Storage(format!(
                "lost the connection to the PostgreSQL server at {}: {}",
                self.endpoint,
                describe(error)
            ));
        }
        EngineError::Storage(format!(
            "PostgreSQL error at {}: {}",
            self.endpoint,
            describe(error)
        ))
    }

    /// Runs `f` in one transaction, again from the start after a lost race.
    pub(crate) fn transaction<T>(
        &self,
        channel: &str,
        mut f: impl FnMut(&mut Tx<'_>) -> PgResult<T>,
    ) -> Result<T, EngineError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut conn = self.checkout()?;
            let outcome = run_once(&mut conn, channel, &mut f);
            if let Err(PgError::Begin(_)) = outcome {
                // A connection that cannot begin is broken, and so, most
                // likely, are the other idle ones (a restarted server): drop
                // them all rather than fail once per pooled connection.
                self.pool
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
            } else {
                // A connection whose transaction failed half-way was rolled
                // back by the drop of the transaction, so it can serve again
                // unless closed.
                self.checkin(conn);
            }
            match outcome {
                Ok(value) => return Ok(value),
                Err(PgError::Engine(error)) => return Err(error),
                Err(PgError::Db(error)) if is_retryable(&error) && attempts < RETRIES => {
                    // A short random pause lets the winner of the race finish.
                    std::thread::sleep(Duration::from_micros(fastrand::u64(100..2000)));
                }
                Err(PgError::Db(error)) => return Err(self.engine_error(&error, attempts)),
                Err(PgError::Begin(error)) if attempts < 2 => {
                    // The broken connection was not put back; the next round
                    // takes or opens another.
                    let _ = error;
                }
                Err(PgError::Begin(error)) => return Err(self.engine_error(&error, attempts)),
            }
        }
    }
}

pub(crate) fn run_once<T>(
    conn: &mut PgConn,
    channel: &str,
    f: &mut impl FnMut(&mut Tx<'_>) -> PgResult<T>,
) -> PgResult<T> {
    let PgConn { client, statements } = conn;
    let tx = client.transaction().map_err(PgError::Begin)?;
    let mut tx = Tx {
        tx,
        statements,
        wake: false,
    };
    let value = f(&mut tx)?;
    if tx.wake {
        // NOTIFY is transactional (sent at commit) and identical notifications
        // of one transaction are sent once, so this is one wake-up per
        // transaction however many jobs it made runnable.
        tx.execute("SELECT pg_notify($1, '')", &[&channel])?;
    }
    tx.tx.commit()?;
    Ok(value)
}

/// The message of a database error, with its detail and hint when present.
pub(crate) fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; {detail}"));
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    }
}

/// The URL with its password replaced by `***`.
pub fn mask_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}
