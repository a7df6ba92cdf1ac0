//! The final check and the figures: table contents against the workload model, latency
//! summaries, and Prometheus histogram quantiles.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::json;

use mqtt_dynamo::config::Config;
use mqtt_dynamo::storage::item::{Item, Key, Table};
use mqtt_dynamo::storage::model::TableModel;

pub fn quantiles_ms(h: &Histogram<u64>, unit_per_ms: f64) -> serde_json::Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / unit_per_ms;
    json!({"p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": h.max() as f64 / unit_per_ms})
}

pub fn fmt_q(h: &Histogram<u64>, unit_div: f64, unit: &str) -> String {
    let v = |q: f64| h.value_at_quantile(q) as f64 / unit_div;
    format!(
        "p50 {:.2} {unit}, p99 {:.2} {unit}, p99.9 {:.2} {unit}",
        v(0.5),
        v(0.99),
        v(0.999)
    )
}

/// Scans every table (all pages) into a model for comparison.
pub async fn read_tables(
    client: &aws_sdk_dynamodb::Client,
    cfg: &Config,
) -> Result<TableModel, String> {
    let mut model = TableModel::new();
    for (key, item) in mqtt_dynamo::test_util::items::try_scan_all(client, cfg).await? {
        if key.table == Table::TopicIndex {
            // Which levels the service spread over more buckets is its own affair (it depends on
            // rates): the index is compared as the topics it lists.
            if let Some(unspread) = mqtt_dynamo::storage::topic_index::unspread(&key) {
                let item = unspread.to_item();
                model.insert(unspread, item);
            }
            continue;
        }
        model.insert(key, item);
    }
    Ok(model)
}

/// Differences between what the tables hold and what they must hold.
#[derive(Debug, Default)]
pub struct Verification {
    pub expected: usize,
    pub missing: usize,
    pub unexpected: usize,
    pub different: usize,
    pub examples: Vec<String>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.missing == 0 && self.unexpected == 0 && self.different == 0
    }

    pub fn json(&self) -> serde_json::Value {
        json!({"expected": self.expected, "missing": self.missing, "unexpected": self.unexpected,
               "different": self.different, "examples": self.examples})
    }
}

/// Drops the attributes the service sets from its own clock (ExHook carries no connect or
/// disconnect time, so `online_at` / `offline_at` are the service's `now`).
pub fn without_service_times(items: &mut BTreeMap<Key, Item>) {
    for (k, item) in items.iter_mut() {
        if k.table == Table::Client {
            item.remove("online_at");
            item.remove("offline_at");
            // Event-time order's stamps of presence: the service's clock too over ExHook.
            item.remove(mqtt_dynamo::storage::item::EVENT_MS);
            item.remove(mqtt_dynamo::storage::item::CONNECTED_MS);
        }
    }
}

pub fn verify(expected: &BTreeMap<Key, Item>, got: &BTreeMap<Key, Item>) -> Verification {
    let mut v = Verification {
        expected: expected.len(),
        ..Default::default()
    };
    for (k, item) in expected {
        match got.get(k) {
            None => {
                v.missing += 1;
                if v.examples.len() < 5 {
                    v.examples.push(format!("missing {} {}", k.table, k.hash));
                }
            }
            Some(g) if g != item => {
                v.different += 1;
                if v.examples.len() < 5 {
                    let mut text = format!(
                        "different {} {}: expected {item:?}, found {g:?}",
                        k.table, k.hash
                    );
                    if text.len() > 300 {
                        let cut = (0..=300)
                            .rev()
                            .find(|i| text.is_char_boundary(*i))
                            .unwrap_or(0);
                        text.truncate(cut);
                        text.push_str(" …");
                    }
                    v.examples.push(text);
                }
            }
            Some(_) => {}
        }
    }
    for k in got.keys() {
        if !expected.contains_key(k) {
            v.unexpected += 1;
            if v.examples.len() < 5 {
                v.examples
                    .push(format!("unexpected {} {}", k.table, k.hash));
            }
        }
    }
    v
}

/// A quantile of a Prometheus histogram from its `_bucket` samples (summed over label sets):
/// the upper bound of the bucket the quantile falls in.
pub fn prometheus_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let bucket = format!("{name}_bucket");
    let mut by_le: BTreeMap<String, f64> = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with(&bucket)) {
        let (series, value) = line.rsplit_once(' ')?;
        let le = series.split("le=\"").nth(1)?.split('"').next()?.to_string();
        *by_le.entry(le).or_default() += value.parse::<f64>().ok()?;
    }
    let mut buckets: Vec<(f64, f64)> = by_le
        .into_iter()
        .map(|(le, n)| {
            (
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                },
                n,
            )
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map(|(le, _)| *le)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantile_from_buckets() {
        let text = "x_bucket{le=\"0.1\"} 50\nx_bucket{le=\"0.5\"} 99\nx_bucket{le=\"+Inf\"} 100\nx_sum 3\nx_count 100\n";
        assert_eq!(prometheus_quantile(text, "x", 0.5), Some(0.1));
        assert_eq!(prometheus_quantile(text, "x", 0.99), Some(0.5));
        assert_eq!(prometheus_quantile(text, "x", 1.0), Some(f64::INFINITY));
        assert_eq!(prometheus_quantile("", "x", 0.5), None);
    }
}
