//! What a finished job does to the jobs that depend on it, written once over
//! the statements a backend's transaction offers ([`FinishSteps`]).
//!
//! A job that completes releases each waiting dependent whose dependencies
//! are all complete (pending if its eta has come, scheduled otherwise). A job
//! that ends dead, cancelled or expired ends each waiting dependent dead with
//! a `dependency` error record naming it, and so, in turn, do theirs. A job
//! that finished without a result starts its retention then.

use crate::model::Status;

/// What a job that finished with a status does to a waiting dependent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DependentEffect {
    /// Release it once none of its dependencies is unfinished.
    ReleaseWhenReady,
    /// End it dead: a dependency can never complete now.
    Fail,
}

impl DependentEffect {
    /// The effect of a dependency that finished with `status`.
    pub const fn of(status: Status) -> DependentEffect {
        match status {
            Status::Complete => DependentEffect::ReleaseWhenReady,
            _ => DependentEffect::Fail,
        }
    }
}

/// The message of the error record of a dependent that ends dead because
/// job `dependency` ended with `status`.
pub fn dependency_failed_message(job_id: i64, dependency: i64, status: Status) -> String {
    format!("job {job_id} depends on job {dependency}, which ended {status}")
}

/// The statements that resolve a finished job's dependents.
pub trait FinishSteps {
    /// The backend's error.
    type Error;

    /// Sets the retention deadline of a finished job that has no result.
    fn start_retention(&mut self, job_id: i64) -> Result<(), Self::Error>;

    /// The jobs that depend on `job_id`.
    fn dependents(&mut self, job_id: i64) -> Result<Vec<i64>, Self::Error>;

    /// Takes the dependent's row lock where writers race, so that two of its
    /// dependencies finishing at once take turns (the second then counts the
    /// first as done). Nothing where writers take turns anyway.
    fn lock_dependent(&mut self, dependent: i64) -> Result<(), Self::Error> {
        let _ = dependent;
        Ok(())
    }

    /// How many of the dependent's dependencies are not complete.
    fn unfinished_dependencies(&mut self, dependent: i64) -> Result<i64, Self::Error>;

    /// Moves the dependent, if still waiting, to pending (its eta has come)
    /// or scheduled.
    fn release_waiting(&mut self, dependent: i64, now_ms: i64) -> Result<(), Self::Error>;

    /// Ends the dependent, if still waiting, dead with a `dependency` error
    /// record naming its `cause` (the dependency and how it ended); whether
    /// it did.
    fn fail_waiting(
        &mut self,
        dependent: i64,
        cause: (i64, Status),
        now_ms: i64,
    ) -> Result<bool, Self::Error>;
}

/// Resolves, transitively, what the job `job_id` that just finished with
/// `status` does to the jobs that depend on it.
pub fn on_finished<T: FinishSteps>(
    tx: &mut T,
    job_id: i64,
    status: Status,
    now_ms: i64,
) -> Result<(), T::Error> {
    let mut work = vec![(job_id, status)];
    while let Some((id, status)) = work.pop() {
        if status != Status::Complete {
            tx.start_retention(id)?;
        }
        for dependent in tx.dependents(id)? {
            tx.lock_dependent(dependent)?;
            match DependentEffect::of(status) {
                DependentEffect::ReleaseWhenReady => {
                    if tx.unfinished_dependencies(dependent)? == 0 {
                        tx.release_waiting(dependent, now_ms)?;
                    }
                }
                DependentEffect::Fail => {
                    if tx.fail_waiting(dependent, (id, status), now_ms)? {
                        work.push((dependent, Status::Dead));
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::convert::Infallible;

    /// Jobs in memory: each one's status and the jobs it depends on.
    struct Graph {
        status: HashMap<i64, Status>,
        deps: Vec<(i64, i64)>,
        retained: Vec<i64>,
        messages: Vec<String>,
    }

    impl Graph {
        fn new(jobs: &[(i64, Status)], deps: &[(i64, i64)]) -> Graph {
            Graph {
                status: jobs.iter().copied().collect(),
                deps: deps.to_vec(),
                retained: Vec::new(),
                messages: Vec::new(),
            }
        }

        fn finish(&mut self, job_id: i64, status: Status) {
            self.status.insert(job_id, status);
            on_finished(self, job_id, status, 100).unwrap();
        }
    }

    impl FinishSteps for Graph {
        type Error = Infallible;

        fn start_retention(&mut self, job_id: i64) -> Result<(), Infallible> {
            self.retained.push(job_id);
            Ok(())
        }

        fn dependents(&mut self, job_id: i64) -> Result<Vec<i64>, Infallible> {
            Ok(self
                .deps
                .iter()
                .filter(|(_, dep)| *dep == job_id)
                .map(|(job, _)| *job)
                .collect())
        }

        fn unfinished_dependencies(&mut self, dependent: i64) -> Result<i64, Infallible> {
            let unfinished = self
                .deps
                .iter()
                .filter(|(job, dep)| *job == dependent && self.status[dep] != Status::Complete)
                .count();
            Ok(i64::try_from(unfinished).unwrap())
        }

        fn release_waiting(&mut self, dependent: i64, _: i64) -> Result<(), Infallible> {
            if self.status[&dependent] == Status::Waiting {
                self.status.insert(dependent, Status::Pending);
            }
            Ok(())
        }

        fn fail_waiting(
            &mut self,
            dependent: i64,
            (dependency, status): (i64, Status),
            _: i64,
        ) -> Result<bool, Infallible> {
            if self.status[&dependent] != Status::Waiting {
                return Ok(false);
            }
            self.status.insert(dependent, Status::Dead);
            self.messages
                .push(dependency_failed_message(dependent, dependency, status));
            Ok(true)
        }
    }

    #[test]
    fn a_dependent_is_released_once_all_its_dependencies_complete() {
        let mut graph = Graph::new(
            &[
                (1, Status::Running),
                (2, Status::Running),
                (3, Status::Waiting),
            ],
            &[(3, 1), (3, 2)],
        );
        graph.finish(1, Status::Complete);
        assert_eq!(graph.status[&3], Status::Waiting);
        graph.finish(2, Status::Complete);
        assert_eq!(graph.status[&3], Status::Pending);
        assert!(
            graph.retained.is_empty(),
            "a complete job keeps its result's own retention"
        );
    }

    #[test]
    fn a_failed_dependency_ends_its_dependents_dead_transitively() {
        let mut graph = Graph::new(
            &[
                (1, Status::Running),
                (2, Status::Waiting),
                (3, Status::Waiting),
            ],
            &[(2, 1), (3, 2)],
        );
        graph.finish(1, Status::Cancelled);
        assert_eq!(
            (graph.status[&2], graph.status[&3]),
            (Status::Dead, Status::Dead)
        );
        assert_eq!(
            graph.messages,
            [
                "job 2 depends on job 1, which ended cancelled",
                "job 3 depends on job 2, which ended dead"
            ]
        );
        assert_eq!(graph.retained, [1, 2, 3]);
    }

    #[test]
    fn every_unsuccessful_end_fails_dependents_and_only_completion_releases() {
        assert_eq!(
            DependentEffect::of(Status::Complete),
            DependentEffect::ReleaseWhenReady
        );
        for status in [Status::Dead, Status::Cancelled, Status::Expired] {
            assert_eq!(DependentEffect::of(status), DependentEffect::Fail);
        }
    }
}
