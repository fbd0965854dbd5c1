//! Prometheus text exposition of every shard's probe, via `prometheus-client`.
//!
//! The collector reads the probes at scrape time; nothing is copied into a registry
//! on the message path.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::probe::{AclAction, Limit, Series, ShardProbe, RELOAD_RESULTS, SHARD_SERIES};

/// All shards' probes, indexed by shard id. Shared by every shard thread.
pub type Probes = Arc<[Arc<ShardProbe>]>;

#[derive(Debug)]
struct ShardsCollector {
    probes: Probes,
}

impl Collector for ShardsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, series) in SHARD_SERIES {
            let metric_type = match series {
                Series::Counter(_)
                | Series::CounterByQos(_)
                | Series::CounterByLimit(_)
                | Series::CounterByAclAction(_)
                | Series::ReloadsByResult(_)
                | Series::WalCounter(_) => MetricType::Counter,
                Series::Gauge(_) | Series::WalGauge(_) => MetricType::Gauge,
                Series::WalHistogram(..) | Series::Histogram(..) => MetricType::Histogram,
            };
            let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
            for (shard, probe) in self.probes.iter().enumerate() {
                let shard = shard.to_string();
                match series {
                    Series::Counter(get) => {
                        let labels = [("shard", shard.as_str())];
                        let family = metric.encode_family(&labels)?;
                        ConstCounter::new(get(probe).get()).encode(family)?;
                    }
                    Series::Gauge(get) => {
                        let labels = [("shard", shard.as_str())];
                        let family = metric.encode_family(&labels)?;
                        ConstGauge::new(get(probe).get()).encode(family)?;
                    }
                    Series::WalCounter(get) => {
                        let Some(wal) = probe.wal.get() else { continue };
                        let labels = [("shard", shard.as_str())];
                        let family = metric.encode_family(&labels)?;
                        ConstCounter::new(get(wal).load(Ordering::Relaxed)).encode(family)?;
                    }
                    Series::WalGauge(get) => {
                        let Some(wal) = probe.wal.get() else { continue };
                        let labels = [("shard", shard.as_str())];
                        let family = metric.encode_family(&labels)?;
                        ConstGauge::new(get(wal)).encode(family)?;
                    }
                    Series::WalHistogram(get, scale) => {
                        let Some(wal) = probe.wal.get() else { continue };
                        let labels = [("shard", shard.as_str())];
                        encode_histogram(metric.encode_family(&labels)?, get(wal), *scale)?;
                    }
                    Series::Histogram(get, scale) => {
                        let labels = [("shard", shard.as_str())];
                        encode_histogram(metric.encode_family(&labels)?, get(probe), *scale)?;
                    }
                    Series::CounterByLimit(get) => {
                        for (limit, counter) in Limit::ALL.iter().zip(get(probe)) {
                            let labels = [("shard", shard.as_str()), ("limit", limit.key())];
                            let family = metric.encode_family(&labels)?;
                            ConstCounter::new(counter.get()).encode(family)?;
                        }
                    }
                    Series::CounterByAclAction(get) => {
                        for (action, counter) in AclAction::ALL.iter().zip(get(probe)) {
                            let labels = [("shard", shard.as_str()), ("action", action.label())];
                            let family = metric.encode_family(&labels)?;
                            ConstCounter::new(counter.get()).encode(family)?;
                        }
                    }
                    Series::ReloadsByResult(get) if shard == "0" => {
                        for (result, counter) in RELOAD_RESULTS.iter().zip(get(probe)) {
                            let labels = [("result", *result)];
                            let family = metric.encode_family(&labels)?;
                            ConstCounter::new(counter.get()).encode(family)?;
                        }
                    }
                    Series::ReloadsByResult(_) => {}
                    Series::CounterByQos(get) => {
                        for (qos, counter) in get(probe).iter().enumerate() {
                            let qos = qos.to_string();
                            let labels = [("shard", shard.as_str()), ("qos", qos.as_str())];
                            let family = metric.encode_family(&labels)?;
                            ConstCounter::new(counter.get()).encode(family)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// One shard's histogram, its bounds scaled to the exported unit.
fn encode_histogram(
    mut family: prometheus_client::encoding::MetricEncoder<'_>,
    histogram: &crate::storage::Histogram,
    scale: f64,
) -> Result<(), std::fmt::Error> {
    let buckets: Vec<(f64, u64)> = histogram
        .bounds()
        .iter()
        .map(|&b| b as f64 * scale)
        .chain(std::iter::once(f64::INFINITY))
        .zip(histogram.bucket_counts())
        .collect();
    family.encode_histogram::<()>(
        histogram.sum() as f64 * scale,
        histogram.count(),
        &buckets,
        None,
    )
}

/// Renders the whole exposition: build info, then every per-shard series.
pub fn render(probes: &Probes) -> String {
    let mut registry = Registry::with_prefix("shardmq");
    registry.register(
        "build",
        "Build information",
        Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", env!("SHARDMQ_GIT_COMMIT")),
        ]),
    );
    registry.register_collector(Box::new(ShardsCollector {
        probes: Arc::clone(probes),
    }));
    let mut out = String::with_capacity(4096);
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_labelled_by_shard() {
        let probes: Probes = (0..2).map(|_| Arc::new(ShardProbe::default())).collect();
        probes[1].connections_accepted_total.add(7);
        probes[0].connections_current.add(3);
        let text = render(&probes);
        assert!(
            text.contains("shardmq_connections_accepted_total{shard=\"1\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("shardmq_connections_current{shard=\"0\"} 3"),
            "{text}"
        );
        assert!(text.contains("shardmq_build_info{version=\""), "{text}");
        probes[1].hit(Limit::RetainedMessagesMax);
        let text = render(&probes);
        assert!(
            text.contains(
                "shardmq_limit_hits_total{shard=\"1\",limit=\"retained_messages_max\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("shardmq_mesh_batches_sent_total{shard=\"0\"} 0"),
            "{text}"
        );
    }
}
