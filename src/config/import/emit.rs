//! Writing the TOML: the chosen pool's endpoint and keys, the rules in EMQX's order, and the
//! warnings about what did not carry over.

use std::fmt::Write as _;

use super::map::Mapped;
use super::{Imported, Importer};

impl Importer {
    pub(super) fn finish(mut self) -> Imported {
        // Rules: hook points in file order, then by <n>.
        let hook_lines = std::mem::take(&mut self.hook_lines);
        let mut hook_order: Vec<&str> = Vec::new();
        let mut mapped = Vec::new();
        for h in &hook_lines {
            let hook_index = match hook_order.iter().position(|name| *name == h.hook) {
                Some(index) => index,
                None => {
                    hook_order.push(&h.hook);
                    hook_order.len() - 1
                }
            };
            if let Some(m) = self.map_hook(h, hook_index) {
                mapped.push(m);
            }
        }
        mapped.sort_by(|a, b| (a.hook_index, &a.source.seq).cmp(&(b.hook_index, &b.source.seq)));

        let chosen = self.choose_pool(&mapped);
        self.check_pool_references(&mapped, chosen);

        let mut out = String::new();
        out.push_str(
            "# mqtt-dynamo configuration imported from an EMQX 4 emqx_backend_dynamo.conf\n\
             # (backend.dynamo.* keys). Review the importer's warnings before using it.\n",
        );
        if mapped.is_empty() && !hook_lines.is_empty() {
            self.warn(format!(
                "none of the {} could be mapped; the imported configuration has `rules = []` (no rules, nothing is persisted) instead of falling back to the seed's default rules",
                plural(hook_lines.len(), "hook line")
            ));
            out.push_str(
                "\n# None of the EMQX hook lines could be mapped (see the importer's warnings). An empty\n\
                 # list means no rules; leaving `rules` out would mean the seed's default rules.\n\
                 rules = []\n",
            );
        }
        if hook_lines.is_empty() {
            self.warn(
                "the file has no backend.dynamo.hook.* lines; `rules` is left out of the imported configuration, so the seed's default rules apply (write `rules = []` for none)"
                    .to_string(),
            );
        }

        self.write_dynamodb(&mut out, chosen);
        self.write_rules(&mut out, &mapped);

        // Warnings about a line in line order, then the general ones.
        let mut warnings = self.warnings;
        warnings.sort_by_key(|w| line_of(w).unwrap_or(usize::MAX));
        Imported {
            toml: out,
            warnings,
        }
    }

    /// The pool the mapped hook lines name most (ties: the first defined); warns about the others.
    pub(super) fn choose_pool(&mut self, mapped: &[Mapped]) -> Option<usize> {
        let uses = |name: &str| {
            mapped
                .iter()
                .filter(|m| m.pool.as_deref() == Some(name))
                .count()
        };
        let counts: Vec<usize> = self.pools.iter().map(|p| uses(&p.name)).collect();
        let best = counts.iter().copied().max()?;
        let chosen = counts.iter().position(|&c| c == best)?;
        if self.pools.len() > 1 {
            let others: Vec<String> = self
                .pools
                .iter()
                .zip(&counts)
                .enumerate()
                .filter(|(i, _)| *i != chosen)
                .map(|(_, (p, c))| format!("{} ({})", p.name, plural(*c, "mapped hook line")))
                .collect();
            let chosen_name = &self.pools[chosen].name;
            let message = format!(
                "{} pools are defined, but mqtt-dynamo talks to one DynamoDB endpoint: used pool {} ({}); ignored {}, whose settings are dropped and whose rules now write through pool {}",
                self.pools.len(),
                chosen_name,
                plural(best, "mapped hook line"),
                others.join(", "),
                chosen_name,
            );
            self.warn(message);
        }
        Some(chosen)
    }

    /// Warns once per undefined pool that hook lines name.
    pub(super) fn check_pool_references(&mut self, mapped: &[Mapped], chosen: Option<usize>) {
        let mut undefined: Vec<(&str, Vec<usize>)> = Vec::new();
        for m in mapped {
            let Some(name) = m.pool.as_deref() else {
                continue;
            };
            if self.pools.iter().any(|p| p.name == name) {
                continue;
            }
            match undefined.iter_mut().find(|(n, _)| *n == name) {
                Some((_, lines)) => lines.push(m.source.line),
                None => undefined.push((name, vec![m.source.line])),
            }
        }
        let target = match chosen {
            Some(i) => format!("the endpoint of pool {}", self.pools[i].name),
            None => "AWS's DynamoDB endpoint for the region (no pool is defined)".to_string(),
        };
        for (name, lines) in undefined {
            let lines: Vec<String> = lines.iter().map(usize::to_string).collect();
            let message = format!(
                "pool {name:?} (named on line{} {}) is not defined in this file; those rules were kept and write to {target}",
                if lines.len() == 1 { "" } else { "s" },
                lines.join(", "),
            );
            self.warn(message);
        }
    }

    pub(super) fn write_dynamodb(&mut self, out: &mut String, chosen: Option<usize>) {
        out.push_str("\n[dynamodb]\n");
        out.push_str(
            "# An EMQX setup means a real DynamoDB: never start the embedded, in-memory one.\n\
             embedded = false\n",
        );
        match &self.region {
            Some(region) => {
                let _ = writeln!(out, "region = {}", quote(&region.value));
            }
            None => out.push_str(
                "# backend.dynamo.region is not set: us-west-2 applies (the default of both).\n",
            ),
        }
        let Some(chosen) = chosen else {
            self.warn(
                "no pool (backend.dynamo.<pool>.server) is defined; endpoint_url is left unset, so mqtt-dynamo uses AWS's DynamoDB endpoint for the region and the AWS default credentials"
                    .to_string(),
            );
            return;
        };
        let pool = &self.pools[chosen];
        let name = pool.name.clone();
        let mut warnings = Vec::new();
        let _ = writeln!(out, "# From pool {name} (backend.dynamo.{name}.*).");
        match &pool.server {
            Some(server) => {
                let url = &server.value;
                if let Some(aws_region) = aws_endpoint_region(url) {
                    let _ = writeln!(
                        out,
                        "# This is AWS's own DynamoDB endpoint; it is kept as written, though without\n\
                         # endpoint_url the AWS SDK picks the same endpoint from region."
                    );
                    let region = self.region.as_ref().map_or("us-west-2", |r| &r.value);
                    if aws_region != region {
                        warnings.push(format!(
                            "line {}: backend.dynamo.{name}.server is AWS's endpoint for {aws_region}, but the region is {region}; AWS rejects requests signed for another region, so check which one is meant",
                            server.line
                        ));
                    }
                } else if !(url.starts_with("http://") || url.starts_with("https://")) {
                    warnings.push(format!(
                        "line {}: backend.dynamo.{name}.server has no http:// or https:// scheme; kept as written, but the AWS SDK needs a full URL such as http://localhost:8000",
                        server.line
                    ));
                }
                let _ = writeln!(out, "endpoint_url = {}", quote(url));
            }
            None => warnings.push(format!(
                "pool {name} has no server; endpoint_url is left unset, so mqtt-dynamo uses AWS's DynamoDB endpoint for the region"
            )),
        }
        match (&pool.access_key_id, &pool.secret_access_key) {
            (Some(id), Some(secret)) => {
                out.push_str(
                    "# Static keys, as in the EMQX file. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY\n\
                     # override them; consider keeping the secret in the environment instead.\n",
                );
                let _ = writeln!(out, "access_key_id = {}", quote(&id.value));
                let _ = writeln!(out, "secret_access_key = {}", quote(&secret.value));
            }
            (None, None) => {}
            (Some(set), None) | (None, Some(set)) => warnings.push(format!(
                "line {}: pool {name} sets only one of aws_access_key_id and aws_secret_access_key; both are left out (they go together), so the AWS default credential chain applies",
                set.line
            )),
        }
        if let Some(size) = &pool.pool_size {
            warnings.push(format!(
                "line {}: backend.dynamo.{name}.pool_size ignored: mqtt-dynamo has no connection pool; its pipeline batches writes and bounds the requests in flight with [pipeline] max_in_flight (default 32)",
                size.line
            ));
        }
        self.warnings.extend(warnings);
    }

    pub(super) fn write_rules(&self, out: &mut String, mapped: &[Mapped]) {
        for m in mapped {
            let _ = writeln!(out, "\n# {} (line {})", m.source.key, m.source.line);
            if m.source.hook == "session.created" {
                out.push_str(
                    "# session.created runs as client.connected in mqtt-dynamo (where on_subscribe_lookup is documented).\n",
                );
            }
            if m.client_hook && m.topic.is_some() {
                out.push_str("# A topic has no effect on a client hook.\n");
            }
            out.push_str("[[rules]]\n");
            let _ = writeln!(out, "hook = {}", quote(&m.source.hook));
            let _ = writeln!(out, "action = {}", quote(m.action.as_str()));
            if let Some(topic) = &m.topic {
                let _ = writeln!(out, "topic = {}", quote(topic));
            }
        }
    }
}

/// The line a warning is about, from its `line N:` prefix.
pub(super) fn line_of(warning: &str) -> Option<usize> {
    let rest = warning.strip_prefix("line ")?;
    let end = rest.find(':')?;
    rest[..end].parse().ok()
}

pub(super) fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The region of an AWS DynamoDB endpoint URL (`https://dynamodb.<region>.amazonaws.com`).
pub(super) fn aws_endpoint_region(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    let host = rest.split(['/', ':', '?', '#']).next()?;
    let inner = host.strip_prefix("dynamodb.")?;
    let region = inner
        .strip_suffix(".amazonaws.com")
        .or_else(|| inner.strip_suffix(".amazonaws.com.cn"))?;
    (!region.is_empty() && !region.contains('.')).then_some(region)
}

/// A TOML basic string literal, escaped.
pub(super) fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
