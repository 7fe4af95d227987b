//! What a purge of finished jobs may remove.

use crate::error::EngineError;
use crate::model::Status;

/// A purge of finished jobs: up to `limit` of them in `statuses`, finished
/// before `finished_before_ms` (at any time if `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purge<'a> {
    pub statuses: &'a [Status],
    pub finished_before_ms: Option<i64>,
    pub limit: usize,
}

/// Whether a purge of jobs in `statuses`, at most `limit` of them, has
/// anything to do; an invalid option naming the status if one is not
/// terminal (a purge removes finished jobs only).
pub fn purgeable(statuses: &[Status], limit: usize) -> Result<bool, EngineError> {
    if let Some(status) = statuses.iter().find(|status| !status.is_terminal()) {
        return Err(EngineError::InvalidOption(format!(
            "purge removes finished jobs only, not {} ones",
            status.as_str()
        )));
    }
    Ok(!statuses.is_empty() && limit > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finished_statuses_are_purged_and_nothing_asked_is_nothing_done() {
        assert_eq!(purgeable(&[Status::Dead, Status::Complete], 10), Ok(true));
        assert_eq!(purgeable(&[], 10), Ok(false));
        assert_eq!(purgeable(&[Status::Dead], 0), Ok(false));
        assert_eq!(
            purgeable(&[Status::Dead, Status::Running], 10),
            Err(EngineError::InvalidOption(
                "purge removes finished jobs only, not running ones".to_owned()
            ))
        );
    }
}
