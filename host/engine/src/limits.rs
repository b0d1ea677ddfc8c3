//! What a filter may make the host hold outside its own linear memory. The VM's memory
//! limit bounds the guest; it does not bound what host calls copy out of the guest and
//! keep: shared data, queued items, properties, bodies a filter rewrites, header maps
//! it grows, calls in flight, metric definitions, wasm tables. Each has a limit here
//! ([`HostLimits`]).
//!
//! A host call past a limit is refused before any guest bytes are copied, with the
//! ABI's status for that call (see `docs/parity.md`); the refusal is counted per filter
//! and limit ([`Refusals`], on the gateway's `/metrics`) and logged, at most one line
//! per filter and limit a second, so a hostile filter cannot flood the log either.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use crate::abi::Status;

/// The host's limits on what filters make it hold. The defaults are far above what our
/// four filters use (the largest: tier-limiter's 65 536 bucket slots of ~80 bytes,
/// ~5 MiB and 65 536 keys; oidc's 256 published sessions of at most 24 KiB and its
/// bounded lists, ~7 MiB) and far below what would hurt a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLimits {
    /// Shared data of one `vm_id`, keys and values together (every VM of that `vm_id`,
    /// on every worker, shares it).
    pub shared_data_bytes: usize,
    /// Shared-data keys of one `vm_id`. Envoy never frees a key; this is their bound.
    pub shared_data_keys: usize,
    /// One shared-data value or one queued item.
    pub value_bytes: usize,
    /// One shared-data key, queue name or property path.
    pub key_bytes: usize,
    /// Properties one request's filters set (`set_property`), paths and values
    /// together and 64 bytes for each; the same again for what one VM sets from its
    /// root context.
    pub property_bytes: usize,
    /// A request or response body a filter rewrites with `set_buffer_bytes`, when the
    /// embedder gives the stream no body limit of its own (the gateway gives the
    /// service's `max_request_body_bytes` / `max_response_body_bytes`); also an
    /// `http_call` answer or gRPC message a filter rewrites.
    pub body_bytes: usize,
    /// One header map (a request's or response's headers or trailers, or an
    /// `http_call` answer's) as filters make it grow: names and values, and
    /// [`ENTRY_BYTES`](crate::headers::ENTRY_BYTES) for each entry. What arrived larger
    /// may still shrink; it may not grow.
    pub header_bytes: usize,
    /// `http_call`s and `grpc_call`s one request has in flight at once.
    pub calls_per_request: usize,
    /// `http_call`s and `grpc_call`s one VM has in flight at once, its root context's
    /// included. A call with no timeout to a service that never answers keeps its
    /// place until the VM goes.
    pub calls_per_vm: usize,
    /// One call's headers, body and trailers (gRPC: service, method, metadata and
    /// message), as the filter passes them.
    pub call_bytes: usize,
    /// Shared queues one `vm_id` may register.
    pub queues: usize,
    /// Bytes queued in the shared queues of one `vm_id`, all its queues together.
    pub queue_bytes: usize,
    /// Items in one queue; past it the oldest item is dropped for the new one.
    pub queue_items: usize,
    /// Metric names one `vm_id` may define (metrics live as long as the host).
    pub metrics: usize,
    /// One metric name.
    pub metric_name_bytes: usize,
    /// Elements of a VM's wasm tables (our filters declare 178-414).
    pub table_elements: usize,
    /// One log line a filter writes (`proxy_log`, WASI `fd_write`); longer ones are
    /// cut to it.
    pub log_bytes: usize,
}

const MIB: usize = 1 << 20;

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits {
            shared_data_bytes: 64 * MIB,
            shared_data_keys: 100_000,
            value_bytes: 4 * MIB,
            key_bytes: 4 * 1024,
            property_bytes: MIB,
            body_bytes: 16 * MIB,
            header_bytes: MIB,
            calls_per_request: 32,
            calls_per_vm: 1000,
            call_bytes: MIB,
            queues: 64,
            queue_bytes: 64 * MIB,
            queue_items: 10_000,
            metrics: 1000,
            metric_name_bytes: 1024,
            table_elements: 10_000,
            log_bytes: 64 * 1024,
        }
    }
}

/// Which limit refused a call (its name is the `limit` label of the metric and the
/// field of [`HostLimits`], or `memory` for the VM's memory limit).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Limit {
    SharedDataBytes,
    SharedDataKeys,
    ValueBytes,
    KeyBytes,
    PropertyBytes,
    BodyBytes,
    HeaderBytes,
    CallsPerRequest,
    CallsPerVm,
    CallBytes,
    Queues,
    QueueBytes,
    QueueItems,
    Metrics,
    MetricNameBytes,
    TableElements,
    LogBytes,
    Memory,
}

impl Limit {
    pub const ALL: [Limit; 18] = [
        Limit::SharedDataBytes,
        Limit::SharedDataKeys,
        Limit::ValueBytes,
        Limit::KeyBytes,
        Limit::PropertyBytes,
        Limit::BodyBytes,
        Limit::HeaderBytes,
        Limit::CallsPerRequest,
        Limit::CallsPerVm,
        Limit::CallBytes,
        Limit::Queues,
        Limit::QueueBytes,
        Limit::QueueItems,
        Limit::Metrics,
        Limit::MetricNameBytes,
        Limit::TableElements,
        Limit::LogBytes,
        Limit::Memory,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Limit::SharedDataBytes => "shared_data_bytes",
            Limit::SharedDataKeys => "shared_data_keys",
            Limit::ValueBytes => "value_bytes",
            Limit::KeyBytes => "key_bytes",
            Limit::PropertyBytes => "property_bytes",
            Limit::BodyBytes => "body_bytes",
            Limit::HeaderBytes => "header_bytes",
            Limit::CallsPerRequest => "calls_per_request",
            Limit::CallsPerVm => "calls_per_vm",
            Limit::CallBytes => "call_bytes",
            Limit::Queues => "queues",
            Limit::QueueBytes => "queue_bytes",
            Limit::QueueItems => "queue_items",
            Limit::Metrics => "metrics",
            Limit::MetricNameBytes => "metric_name_bytes",
            Limit::TableElements => "table_elements",
            Limit::LogBytes => "log_bytes",
            Limit::Memory => "memory",
        }
    }

    /// The configured value, for the log line (`None` for the VM's memory limit, which
    /// is per filter).
    pub fn value(self, l: &HostLimits) -> Option<usize> {
        Some(match self {
            Limit::SharedDataBytes => l.shared_data_bytes,
            Limit::SharedDataKeys => l.shared_data_keys,
            Limit::ValueBytes => l.value_bytes,
            Limit::KeyBytes => l.key_bytes,
            Limit::PropertyBytes => l.property_bytes,
            Limit::BodyBytes => l.body_bytes,
            Limit::HeaderBytes => l.header_bytes,
            Limit::CallsPerRequest => l.calls_per_request,
            Limit::CallsPerVm => l.calls_per_vm,
            Limit::CallBytes => l.call_bytes,
            Limit::Queues => l.queues,
            Limit::QueueBytes => l.queue_bytes,
            Limit::QueueItems => l.queue_items,
            Limit::Metrics => l.metrics,
            Limit::MetricNameBytes => l.metric_name_bytes,
            Limit::TableElements => l.table_elements,
            Limit::LogBytes => l.log_bytes,
            Limit::Memory => return None,
        })
    }
}

/// Why the host did not do what a filter asked: the ABI's own answer, or a limit
/// (which the host call turns into its status for a refusal, and counts and logs).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Status(Status),
    Limit(Limit),
}

impl From<Status> for Refusal {
    fn from(s: Status) -> Self {
        Refusal::Status(s)
    }
}

impl From<Limit> for Refusal {
    fn from(l: Limit) -> Self {
        Refusal::Limit(l)
    }
}

/// One log line per filter and limit per this many nanoseconds, at most.
const LOG_EVERY_NS: u64 = 1_000_000_000;

#[derive(Clone, Copy, Default, Debug)]
struct Count {
    total: u64,
    /// Monotonic time of the last line logged.
    logged_at: Option<u64>,
    /// Refusals since that line.
    unlogged: u64,
}

/// Refusals per filter and limit, with the decision of when one deserves a log line.
#[derive(Default, Debug)]
pub struct Refusals {
    by_filter: Mutex<BTreeMap<String, BTreeMap<Limit, Count>>>,
}

impl Refusals {
    /// Counts one refusal at monotonic time `now_ns`. `Some(n)` when a line is due:
    /// `n` refusals went unlogged since the previous line.
    pub fn refuse(&self, filter: &str, limit: Limit, now_ns: u64) -> Option<u64> {
        let mut all = self.by_filter.lock();
        if !all.contains_key(filter) {
            all.insert(filter.to_owned(), BTreeMap::new());
        }
        let c = all.get_mut(filter)?.entry(limit).or_default();
        c.total += 1;
        let due = c
            .logged_at
            .is_none_or(|t| now_ns.saturating_sub(t) >= LOG_EVERY_NS);
        if !due {
            c.unlogged += 1;
            return None;
        }
        c.logged_at = Some(now_ns);
        Some(std::mem::take(&mut c.unlogged))
    }

    pub fn count(&self, filter: &str, limit: Limit) -> u64 {
        self.by_filter
            .lock()
            .get(filter)
            .and_then(|m| m.get(&limit))
            .map_or(0, |c| c.total)
    }

    /// Every (filter, limit, refusals) with at least one refusal.
    pub fn snapshot(&self) -> Vec<(String, Limit, u64)> {
        self.by_filter
            .lock()
            .iter()
            .flat_map(|(f, m)| m.iter().map(move |(l, c)| (f.clone(), *l, c.total)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_per_filter_and_limit_and_every_refusal_counted() {
        let r = Refusals::default();
        let s = 1_000_000_000;
        assert_eq!(r.refuse("a", Limit::ValueBytes, 5 * s), Some(0));
        for i in 0..99 {
            assert_eq!(r.refuse("a", Limit::ValueBytes, 5 * s + i), None);
        }
        // Another limit, another filter: their own lines.
        assert_eq!(r.refuse("a", Limit::KeyBytes, 5 * s), Some(0));
        assert_eq!(r.refuse("b", Limit::ValueBytes, 5 * s), Some(0));
        assert_eq!(r.refuse("a", Limit::ValueBytes, 6 * s - 1), None);
        // A second on: one line, saying how many went unlogged.
        assert_eq!(r.refuse("a", Limit::ValueBytes, 6 * s + 2), Some(100));
        assert_eq!(r.count("a", Limit::ValueBytes), 102);
        assert_eq!(r.count("a", Limit::Queues), 0);
        assert_eq!(
            r.snapshot(),
            vec![
                ("a".to_owned(), Limit::ValueBytes, 102),
                ("a".to_owned(), Limit::KeyBytes, 1),
                ("b".to_owned(), Limit::ValueBytes, 1),
            ]
        );
    }

    #[test]
    fn every_limit_has_a_distinct_name() {
        let mut names: Vec<&str> = Limit::ALL.iter().map(|l| l.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Limit::ALL.len());
    }
}
