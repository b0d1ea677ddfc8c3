//! The deadline of a response the client reads too slowly.
//!
//! A response body is read from the upstream only as the client reads it (`body.rs`),
//! and hyper polls it only when the client has room for more. A client that stops
//! reading (an HTTP/2 stream window left at zero, a TCP window that never opens) would
//! keep the upstream connection busy for as long as it liked, and the body's own timer,
//! which runs only when the body is polled, would never fire. So each worker keeps the
//! upstream bodies of its responses under way with their requests' deadlines, and
//! twice a second drops those past the deadline: their upstream connections close, and
//! the client's stream fails when it reads again.

use std::cell::{RefCell, RefMut};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use hyper::body::Incoming;

/// How often a worker looks for bodies past their deadline.
const SWEEP: Duration = Duration::from_millis(500);

type Shared = Rc<RefCell<Option<Incoming>>>;

/// An upstream body under the watch; it leaves the watch when dropped.
pub(super) struct Watched {
    body: Shared,
    slot: usize,
}

impl Watched {
    pub fn new(body: Incoming, deadline: Instant) -> Watched {
        let body = Rc::new(RefCell::new(Some(body)));
        let slot = WATCH.with(|w| w.borrow_mut().add(deadline, Rc::downgrade(&body)));
        Watched { body, slot }
    }

    /// The upstream body; `None` once the watch took it away at the deadline.
    pub fn body(&self) -> RefMut<'_, Option<Incoming>> {
        self.body.borrow_mut()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        WATCH.with(|w| w.borrow_mut().remove(self.slot));
    }
}

/// A body and its deadline (the body `None` once it was taken).
type Entry = (Option<Instant>, Weak<RefCell<Option<Incoming>>>);

/// One worker's bodies under the watch, in a slab: a response takes a slot when it
/// begins and gives it back when it ends, so the watch holds only those under way.
#[derive(Default)]
struct Watch {
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    /// Whether this worker's sweeping task runs (it stops when nothing is watched).
    sweeping: bool,
}

thread_local! {
    static WATCH: RefCell<Watch> = RefCell::new(Watch::default());
}

impl Watch {
    fn add(&mut self, deadline: Instant, body: Weak<RefCell<Option<Incoming>>>) -> usize {
        if !self.sweeping {
            self.sweeping = true;
            tokio::task::spawn_local(sweep());
        }
        let entry = Some((Some(deadline), body));
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = entry;
                i
            }
            None => {
                self.slots.push(entry);
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, slot: usize) {
        self.slots[slot] = None;
        self.free.push(slot);
    }

    /// The bodies past their deadline at `now`, each given once (its slot then waits
    /// for the response to end). Stops the sweeping when nothing is watched.
    fn expired(&mut self, now: Instant) -> Vec<Shared> {
        let mut out = Vec::new();
        for slot in self.slots.iter_mut().flatten() {
            if slot.0.is_some_and(|deadline| deadline <= now) {
                slot.0 = None;
                out.extend(slot.1.upgrade());
            }
        }
        if self.free.len() == self.slots.len() {
            self.slots.clear();
            self.free.clear();
            self.sweeping = false;
        }
        out
    }
}

async fn sweep() {
    loop {
        tokio::time::sleep(SWEEP).await;
        let expired = WATCH.with(|w| w.borrow_mut().expired(Instant::now()));
        for body in expired {
            // Dropping the upstream body closes its connection.
            body.borrow_mut().take();
        }
        if !WATCH.with(|w| w.borrow().sweeping) {
            return;
        }
    }
}
