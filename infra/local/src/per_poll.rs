//! One commit per poll of a request: the store jobs a request submits while
//! it is polled wait for the end of that poll and commit together. A
//! request whose independent writes are awaited together (`join!`: cache
//! entry, budget settlement, decision event) then pays for one commit, not
//! one each; on the embedded store a commit costs as much as its writes.

use crate::sqlite::{Db, Job};
use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

thread_local! {
    /// The jobs this thread's current poll holds back, with their database.
    static HELD: RefCell<Option<(Db, Vec<Job>)>> = const { RefCell::new(None) };
}

/// Holds `job` for the end of this thread's poll if that poll holds jobs
/// for `db`; else hands it back.
pub(crate) fn hold(db: &Db, job: Job) -> Option<Job> {
    HELD.with(|held| match held.borrow_mut().as_mut() {
        Some((holder, jobs)) if holder.same(db) => {
            jobs.push(job);
            None
        }
        _ => Some(job),
    })
}

impl Db {
    /// Runs `future`, a request, committing the jobs each of its polls
    /// submits in one transaction at the end of that poll. Background jobs
    /// wait for a moment with no such request in flight (`Requests`).
    ///
    /// A held job's result arrives after the poll that awaited it returned
    /// `Pending`, and would wake the task through the scheduler: on tokio a
    /// task woken during its own poll goes to the back of the run queue and
    /// may wake another worker thread. So the future sees a waker of its
    /// own: a wake while it is polled (the held jobs committing at once)
    /// polls it again straight away, and only other wakes reach the task.
    pub async fn commit_per_poll<F: Future>(&self, future: F) -> F::Output {
        let _serving = self.requests.serving();
        let mut future = pin!(future);
        let gate = Arc::new(WakeGate { state: AtomicU8::new(IDLE), task: Mutex::new(None) });
        let waker = Waker::from(gate.clone());
        std::future::poll_fn(|cx| {
            gate.follow(cx.waker());
            loop {
                gate.state.store(POLLING, Ordering::SeqCst);
                let (out, committed_here) = {
                    let hold = Hold::start(self);
                    let out = future.as_mut().poll(&mut Context::from_waker(&waker));
                    (out, hold.release())
                };
                let woken = gate.state.swap(IDLE, Ordering::SeqCst) == WOKEN;
                match out {
                    Poll::Pending if woken && committed_here => continue,
                    Poll::Pending if woken => cx.waker().wake_by_ref(),
                    _ => {}
                }
                return out;
            }
        })
        .await
    }

    /// Runs `future`, a request, as `commit_per_poll` does, on a task of its
    /// own: it runs to its end whatever becomes of whoever awaits it.
    pub fn spawn_request<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let db = self.clone();
        tokio::spawn(async move { db.commit_per_poll(future).await })
    }
}

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

/// The future's waker: notes a wake during a poll, passes any other on.
struct WakeGate {
    state: AtomicU8,
    task: Mutex<Option<Waker>>,
}

impl WakeGate {
    fn follow(&self, task: &Waker) {
        let mut current = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if !current.as_ref().is_some_and(|w| w.will_wake(task)) {
            *current = Some(task.clone());
        }
    }
}

impl Wake for WakeGate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Either the poll sees WOKEN when it ends, or the wake came after it and goes to the task.
        if let Err(IDLE) = self.state.compare_exchange(POLLING, WOKEN, Ordering::SeqCst, Ordering::SeqCst) {
            if let Some(task) = self.task.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
                task.wake_by_ref();
            }
        }
    }
}

/// This thread's held jobs for one poll. Dropped without `release` (the
/// poll panicked), it still hands its jobs on.
struct Hold {
    outer: Option<(Db, Vec<Job>)>,
    released: bool,
}

impl Hold {
    fn start(db: &Db) -> Self {
        let outer = HELD.with(|held| held.replace(Some((db.clone(), Vec::new()))));
        Self { outer, released: false }
    }

    /// Restores what an enclosing poll held and runs this poll's jobs;
    /// `true` if they ran (and delivered their results) on this thread.
    fn release(mut self) -> bool {
        self.released = true;
        self.run()
    }

    fn run(&mut self) -> bool {
        let Some((db, jobs)) = HELD.with(|held| held.replace(self.outer.take())) else {
            return false;
        };
        // Jobs that cannot be handed on are dropped: their callers hear that the database has stopped.
        !jobs.is_empty() && db.run_or_queue(jobs).unwrap_or(false)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.released {
            self.run();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::sqlite::tests::commits;
    use crate::sqlite::SqliteTable;
    use keel_core::ports::Table;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Two rounds of store calls, the first of two calls awaited together.
    async fn two_rounds(table: &SqliteTable) -> i64 {
        let (a, b) = tokio::join!(table.increment("T", "a", 1, None, None), table.increment("T", "b", 2, None, None));
        table.increment("T", "sum", a.unwrap() + b.unwrap(), None, None).await.unwrap()
    }

    #[test]
    fn a_free_store_answers_within_the_poll_without_waking_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("keel.sqlite")).unwrap();
        let table = SqliteTable::new(db.clone());
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut request = pin!(db.commit_per_poll(two_rounds(&table)));
        assert_eq!(request.as_mut().poll(&mut Context::from_waker(&waker)), Poll::Ready(3));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_request_is_in_flight_until_it_ends_or_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("keel.sqlite")).unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        let (reply, replied) = tokio::sync::oneshot::channel::<()>();
        let mut request = Box::pin(db.commit_per_poll(replied));
        assert!(request.as_mut().poll(&mut cx).is_pending());
        assert_eq!(db.requests.in_flight(), 1);
        reply.send(()).unwrap();
        assert!(request.as_mut().poll(&mut cx).is_ready());
        assert_eq!(db.requests.in_flight(), 0);
        let mut abandoned = Box::pin(db.commit_per_poll(std::future::pending::<()>()));
        assert!(abandoned.as_mut().poll(&mut cx).is_pending());
        assert_eq!(db.requests.in_flight(), 1);
        drop(abandoned);
        assert_eq!(db.requests.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_busy_store_answers_later_and_wakes_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("keel.sqlite")).unwrap();
        let table = SqliteTable::new(db.clone());
        let before = commits(&db);
        let (busy, started) = (db.clone(), std::sync::mpsc::channel());
        let holder = std::thread::spawn(move || {
            busy.with(move |_| {
                started.0.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(100));
                Ok(())
            })
        });
        started.1.recv().unwrap();
        // The held jobs go to the database thread; only its wake can finish the request.
        let sum = tokio::time::timeout(Duration::from_secs(10), db.commit_per_poll(two_rounds(&table))).await;
        assert_eq!(sum.ok(), Some(3));
        holder.join().unwrap().unwrap();
        // The busy holder's commit, then one per round: the first round's two jobs committed together there too.
        assert_eq!(commits(&db) - before - 1, 3);
    }
}
