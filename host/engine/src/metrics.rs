//! Metrics that filters define (`proxy_define_metric`), kept host-wide by name as in
//! Envoy's stats store: the same name from every worker's VM is one metric; and the
//! host's own count of the calls it refused a filter ([`Refusals`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::abi::Status;
use crate::limits::{Limit, Refusal, Refusals};

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub fn from_abi(v: u32) -> Option<Self> {
        Some(match v {
            0 => MetricKind::Counter,
            1 => MetricKind::Gauge,
            2 => MetricKind::Histogram,
            _ => return None,
        })
    }
}

/// Upper bounds of the histogram buckets (Envoy's default bucket set).
pub const HISTOGRAM_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

#[derive(Debug)]
pub struct Metric {
    pub kind: MetricKind,
    value: AtomicI64,
    buckets: [AtomicU64; HISTOGRAM_BUCKETS.len() + 1],
    sum: AtomicU64,
}

impl Metric {
    fn new(kind: MetricKind) -> Self {
        Metric {
            kind,
            value: AtomicI64::new(0),
            buckets: Default::default(),
            sum: AtomicU64::new(0),
        }
    }

    /// `proxy_increment_metric`: counters only go up; histograms cannot be incremented.
    pub fn increment(&self, offset: i64) -> Result<(), Status> {
        match self.kind {
            // Envoy takes only a positive increment for a counter (0 too is refused).
            MetricKind::Counter if offset <= 0 => Err(Status::BadArgument),
            MetricKind::Counter | MetricKind::Gauge => {
                self.value.fetch_add(offset, Ordering::Relaxed);
                Ok(())
            }
            MetricKind::Histogram => Err(Status::BadArgument),
        }
    }

    /// `proxy_record_metric`, as Envoy does it: a counter adds the value, a gauge is
    /// set to it, a histogram records it.
    pub fn record(&self, value: u64) {
        match self.kind {
            MetricKind::Counter => {
                self.value.fetch_add(value as i64, Ordering::Relaxed);
            }
            MetricKind::Gauge => self.value.store(value as i64, Ordering::Relaxed),
            MetricKind::Histogram => {
                let i = HISTOGRAM_BUCKETS
                    .iter()
                    .position(|b| value as f64 <= *b)
                    .unwrap_or(HISTOGRAM_BUCKETS.len());
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
                self.sum.fetch_add(value, Ordering::Relaxed);
            }
        }
    }

    /// Counter or gauge value; histograms have none (`BadArgument`, as in Envoy).
    pub fn get(&self) -> Result<u64, Status> {
        match self.kind {
            MetricKind::Histogram => Err(Status::BadArgument),
            _ => Ok(self.value.load(Ordering::Relaxed) as u64),
        }
    }

    pub fn snapshot(&self) -> MetricValue {
        match self.kind {
            MetricKind::Counter => MetricValue::Counter(self.value.load(Ordering::Relaxed) as u64),
            MetricKind::Gauge => MetricValue::Gauge(self.value.load(Ordering::Relaxed)),
            MetricKind::Histogram => MetricValue::Histogram {
                buckets: self
                    .buckets
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .collect(),
                sum: self.sum.load(Ordering::Relaxed),
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum MetricValue {
    Counter(u64),
    Gauge(i64),
    /// Counts per bucket of [`HISTOGRAM_BUCKETS`] plus an overflow bucket, and the sum.
    Histogram {
        buckets: Vec<u64>,
        sum: u64,
    },
}

impl MetricValue {
    pub fn count(&self) -> u64 {
        match self {
            MetricValue::Counter(v) => *v,
            MetricValue::Gauge(v) => *v as u64,
            MetricValue::Histogram { buckets, .. } => buckets.iter().sum(),
        }
    }
}

#[derive(Default, Debug)]
pub struct Metrics {
    by_name: RwLock<Names>,
    refusals: Refusals,
}

#[derive(Default, Debug)]
struct Names {
    metrics: BTreeMap<String, Arc<Metric>>,
    /// Names each `vm_id` created, for its `metrics` limit.
    created_by: HashMap<String, usize>,
}

impl Metrics {
    /// The metric called `name`; defining it again with the same kind returns the same
    /// one. A name already used with another kind is refused.
    pub fn define(&self, kind: MetricKind, name: &str) -> Result<Arc<Metric>, Status> {
        self.define_by(kind, name, "", usize::MAX)
            .map_err(|r| match r {
                Refusal::Status(s) => s,
                Refusal::Limit(_) => Status::InternalFailure,
            })
    }

    /// [`Metrics::define`] by a VM of `vm_id`, which may create at most `max` names:
    /// past them a new name is refused (names it has are defined again freely).
    pub fn define_by(
        &self,
        kind: MetricKind,
        name: &str,
        vm_id: &str,
        max: usize,
    ) -> Result<Arc<Metric>, Refusal> {
        let same_kind = |m: &Arc<Metric>| {
            if m.kind == kind {
                Ok(m.clone())
            } else {
                Err(Refusal::Status(Status::BadArgument))
            }
        };
        if let Some(m) = self.by_name.read().metrics.get(name) {
            return same_kind(m);
        }
        let mut w = self.by_name.write();
        let Names {
            metrics,
            created_by,
        } = &mut *w;
        if let Some(m) = metrics.get(name) {
            return same_kind(m);
        }
        let created = created_by.get(vm_id).copied().unwrap_or(0);
        if created >= max {
            return Err(Limit::Metrics.into());
        }
        created_by.insert(vm_id.to_owned(), created + 1);
        let m = Arc::new(Metric::new(kind));
        metrics.insert(name.to_owned(), m.clone());
        Ok(m)
    }

    pub fn get(&self, name: &str) -> Option<MetricValue> {
        self.by_name.read().metrics.get(name).map(|m| m.snapshot())
    }

    /// Metric names VMs of `vm_id` created (what its `metrics` limit counts).
    pub fn created_by(&self, vm_id: &str) -> usize {
        self.by_name
            .read()
            .created_by
            .get(vm_id)
            .copied()
            .unwrap_or(0)
    }

    /// Host calls refused to filters, per filter and limit.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// How many calls of `filter` the host refused at `limit`.
    pub fn refused(&self, filter: &str, limit: Limit) -> u64 {
        self.refusals.count(filter, limit)
    }

    pub fn snapshot(&self) -> Vec<(String, MetricValue)> {
        self.by_name
            .read()
            .metrics
            .iter()
            .map(|(k, m)| (k.clone(), m.snapshot()))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn envoy_metric_semantics() {
        let ms = Metrics::default();
        let c = ms.define(MetricKind::Counter, "c").unwrap();
        assert!(Arc::ptr_eq(
            &c,
            &ms.define(MetricKind::Counter, "c").unwrap()
        ));
        assert_eq!(
            ms.define(MetricKind::Gauge, "c").unwrap_err(),
            Status::BadArgument
        );
        c.increment(2).unwrap();
        assert_eq!(c.increment(-1), Err(Status::BadArgument));
        c.record(3);
        assert_eq!(c.get(), Ok(5));
        let g = ms.define(MetricKind::Gauge, "g").unwrap();
        g.increment(-4).unwrap();
        assert_eq!(ms.get("g"), Some(MetricValue::Gauge(-4)));
        let h = ms.define(MetricKind::Histogram, "h").unwrap();
        h.record(7);
        h.record(1_000_000_000);
        assert_eq!(h.get(), Err(Status::BadArgument));
        assert_eq!(ms.get("h").unwrap().count(), 2);
    }

    #[test]
    fn a_vm_id_creates_at_most_its_names() {
        let ms = Metrics::default();
        for name in ["a", "b"] {
            ms.define_by(MetricKind::Counter, name, "vm", 2).unwrap();
        }
        assert_eq!(
            ms.define_by(MetricKind::Counter, "c", "vm", 2).unwrap_err(),
            Refusal::Limit(Limit::Metrics)
        );
        // Its own names again, and names another vm_id created, cost nothing.
        ms.define_by(MetricKind::Counter, "a", "vm", 2).unwrap();
        ms.define_by(MetricKind::Counter, "x", "other", 2).unwrap();
        ms.define_by(MetricKind::Counter, "x", "vm", 2).unwrap();
        assert_eq!(
            ms.define_by(MetricKind::Gauge, "a", "vm", 2).unwrap_err(),
            Refusal::Status(Status::BadArgument)
        );
        assert!(ms.get("c").is_none());
        assert_eq!(ms.created_by("vm"), 2, "a and b; x was another's");
        assert_eq!(ms.created_by("other"), 1);
        assert_eq!(ms.created_by("nobody"), 0);
    }
}
