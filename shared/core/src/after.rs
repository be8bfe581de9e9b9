//! Work a request hands off to run after its response: writes the caller
//! does not wait for (a fresh cache entry, a budget settlement, the decision
//! event). In Lambda the function's internal extension holds the execution
//! environment until every handed-off task has finished (`settled`), so the
//! work is done before Lambda freezes or reuses the environment. Where
//! nothing turned hand-off on (tests, the local stack), the work runs inline
//! and the response waits for it, so every write is visible when it returns.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::Notify;

static ENABLED: AtomicBool = AtomicBool::new(false);
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static IDLE: Notify = Notify::const_new();

/// Turns hand-off on for this process (the Lambda runtime loop, benchmarks).
pub fn enable() {
    ENABLED.store(true, Ordering::SeqCst);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// Runs `work` after the response where hand-off is on, inline where not.
pub async fn hand_off(work: impl Future<Output = ()> + Send + 'static) {
    if !enabled() {
        work.await;
        return;
    }
    RUNNING.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        work.await;
        if RUNNING.fetch_sub(1, Ordering::SeqCst) == 1 {
            IDLE.notify_waiters();
        }
    });
}

/// `hand_off` for code that cannot wait (a `Drop`): the work is counted as
/// running at once, so the Lambda extension waits for it, and spawned.
pub fn spawn_after(work: impl Future<Output = ()> + Send + 'static) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let tracked = enabled();
    if tracked {
        RUNNING.fetch_add(1, Ordering::SeqCst);
    }
    runtime.spawn(async move {
        work.await;
        if tracked && RUNNING.fetch_sub(1, Ordering::SeqCst) == 1 {
            IDLE.notify_waiters();
        }
    });
}

/// Waits until no handed-off work is running.
pub async fn settled() {
    loop {
        let idle = IDLE.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        if RUNNING.load(Ordering::SeqCst) == 0 {
            return;
        }
        idle.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn handed_off_work_runs_after_the_call_returns_and_settled_waits_for_it() {
        enable();
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        hand_off(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            flag.store(true, Ordering::SeqCst);
        })
        .await;
        assert!(!done.load(Ordering::SeqCst), "hand_off returned only after the work");
        settled().await;
        assert!(done.load(Ordering::SeqCst), "settled returned before the work finished");
    }
}
