//! Prometheus metrics.
//!
//! Hot paths never touch the registry: they bump plain counters they own, and each plane
//! registers a [`prometheus::core::Collector`] that reads those counters when `/metrics` is
//! scraped and turns them into metric families with the helpers here. Only rare events (an auth
//! denial) use the registry's own counters directly. Labels carry bounded sets only: never a room,
//! user or session id.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::control::policy::Denial;

/// The appliance's metrics registry and the control plane's own metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    auth_denied: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let build = IntGauge::with_opts(
            Opts::new("relay_build_info", "Build of the running relay; always 1.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("static metric options are valid");
        build.set(1);
        let auth_denied = IntCounterVec::new(
            Opts::new(
                "relay_auth_denied_total",
                "Requests refused by the policy, by reason.",
            ),
            &["reason"],
        )
        .expect("static metric options are valid");
        for d in Denial::ALL {
            auth_denied.with_label_values(&[d.reason()]);
        }
        let m = Metrics {
            registry,
            auth_denied,
        };
        m.register(Box::new(build));
        m.register(Box::new(m.auth_denied.clone()));
        #[cfg(target_os = "linux")]
        m.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        m
    }

    /// Adds a collector. Names are fixed in code, so a clash is a programming error.
    pub fn register(&self, collector: Box<dyn Collector>) {
        self.registry
            .register(collector)
            .expect("metric names are unique");
    }

    pub fn auth_denied(&self, denial: Denial) {
        self.auth_denied.with_label_values(&[denial.reason()]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Builds metric families from plain values at scrape time.
#[derive(Debug, Default)]
pub struct Families(Vec<MetricFamily>);

fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_string());
            l.set_value((*v).to_string());
            l
        })
        .collect()
}

impl Families {
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        self.labelled_counter(name, help, "", &[("", value)])
    }

    /// One counter family with one label; `values` pairs each label value with its count.
    pub fn labelled_counter(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: &[(&str, u64)],
    ) -> &mut Self {
        let mut f = family(name, help, MetricType::COUNTER);
        for (v, n) in values {
            let mut c = Counter::default();
            c.set_value(*n as f64);
            let mut m = Metric::default();
            m.set_counter(c);
            if !label.is_empty() {
                m.set_label(labels(&[(label, v)]));
            }
            f.mut_metric().push(m);
        }
        self.0.push(f);
        self
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        let mut f = family(name, help, MetricType::GAUGE);
        let mut g = Gauge::default();
        g.set_value(value);
        let mut m = Metric::default();
        m.set_gauge(g);
        f.mut_metric().push(m);
        self.0.push(f);
        self
    }

    /// A histogram: `cumulative[i]` observations fell at or below `bounds[i]`; `count` is the
    /// total (the `+Inf` bucket), `sum` their sum.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        bounds: &[f64],
        cumulative: &[u64],
        count: u64,
        sum: f64,
    ) -> &mut Self {
        let mut f = family(name, help, MetricType::HISTOGRAM);
        let mut h = prometheus::proto::Histogram::default();
        let buckets = bounds
            .iter()
            .zip(cumulative)
            .map(|(bound, n)| {
                let mut b = prometheus::proto::Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(*n);
                b
            })
            .collect();
        h.set_bucket(buckets);
        h.set_sample_count(count);
        h.set_sample_sum(sum);
        let mut m = Metric::default();
        m.set_histogram(h);
        f.mut_metric().push(m);
        self.0.push(f);
        self
    }

    pub fn into_vec(self) -> Vec<MetricFamily> {
        self.0
    }
}

/// A collector whose families come from a closure run at scrape time.
pub struct ScrapeCollector<F> {
    descs: Vec<Desc>,
    collect: F,
}

impl<F> std::fmt::Debug for ScrapeCollector<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrapeCollector").finish_non_exhaustive()
    }
}

impl<F: Fn(&mut Families) + Send + Sync> ScrapeCollector<F> {
    /// `names` are the families `collect` produces, with their help texts, for the registry's
    /// duplicate check.
    pub fn new(names: &[(&str, &str)], collect: F) -> Self {
        let descs = names
            .iter()
            .map(|(n, h)| Desc::new(n.to_string(), h.to_string(), vec![], Default::default()))
            .collect::<Result<_, _>>()
            .expect("static metric names are valid");
        ScrapeCollector { descs, collect }
    }
}

impl<F: Fn(&mut Families) + Send + Sync> Collector for ScrapeCollector<F> {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut f = Families::default();
        (self.collect)(&mut f);
        f.into_vec()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn exposition_has_build_info_denials_and_process() {
        let m = Metrics::new();
        m.auth_denied(Denial::DeviceRevoked);
        m.auth_denied(Denial::DeviceRevoked);
        let text = m.render();
        assert!(text.contains("relay_build_info{version=\""), "{text}");
        assert!(
            text.contains("relay_auth_denied_total{reason=\"device_revoked\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("relay_auth_denied_total{reason=\"clearance\"} 0"),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }

    #[test]
    fn plain_counters_are_read_at_scrape_time() {
        let m = Metrics::new();
        let packets = Arc::new(AtomicU64::new(0));
        let p = packets.clone();
        m.register(Box::new(ScrapeCollector::new(
            &[
                ("relay_test_packets_total", "Packets."),
                ("relay_test_delay_seconds", "Delay."),
            ],
            move |f| {
                f.counter(
                    "relay_test_packets_total",
                    "Packets.",
                    p.load(Ordering::Relaxed),
                );
                f.histogram(
                    "relay_test_delay_seconds",
                    "Delay.",
                    &[0.001, 0.01],
                    &[3, 4],
                    5,
                    0.05,
                );
            },
        )));
        packets.store(41, Ordering::Relaxed);
        packets.fetch_add(1, Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("relay_test_packets_total 42"), "{text}");
        assert!(
            text.contains("relay_test_delay_seconds_bucket{le=\"0.01\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("relay_test_delay_seconds_bucket{le=\"+Inf\"} 5"),
            "{text}"
        );
        assert!(text.contains("relay_test_delay_seconds_count 5"), "{text}");
    }
}
