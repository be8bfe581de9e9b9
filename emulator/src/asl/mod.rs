//! An in-process executor of the Amazon States Language subset Keel's saga
//! uses: Pass, Task (`lambda:invoke` and `lambda:invoke.waitForTaskToken`,
//! with Retry, Catch and TimeoutSeconds(Path)), Choice, Succeed and Fail;
//! Parameters with `.$` paths (`$$.Task.Token` from the context object),
//! InputPath, ResultPath, OutputPath.
//! `LocalSaga` runs `infra/statemachines/*.asl.json` with it, durably: every
//! execution is recorded in SQLite and resumed after a restart (steps are
//! idempotent, so re-running one is safe).

mod interpreter;
mod saga;
#[cfg(test)]
mod tests;

pub use interpreter::{execute, Callbacks, TaskFailure, TaskRunner};
pub use saga::LocalSaga;
