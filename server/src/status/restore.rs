//! The cluster's `br restore` line: BR sends one storage URL to every TiKV, and each TiKV
//! resolves its `endpoint` on its own host, so the line works only when every node's view
//! answers the same scheme, port, bucket and prefix on `127.0.0.1`. This module says whether
//! they do, and if not, which nodes differ.

use std::collections::BTreeMap;

use super::report::{NodeStatus, RestoreStatus, ViewStatus};

/// `SCHEME://127.0.0.1:PORT` of a view, as a client on its node reaches it.
#[must_use]
pub fn endpoint(view: &depot_proto::registry::ViewReport) -> String {
    let scheme = if view.scheme == "https" { "https" } else { "http" };
    format!("{scheme}://127.0.0.1:{}", view.port)
}

/// The storage URL of a view (the one its agent's ready line prints).
#[must_use]
pub fn storage_url(view: &ViewStatus) -> String {
    format!(
        "s3://{}/{}?endpoint={}&force-path-style=true",
        view.bucket,
        view.prefix.trim_end_matches('/'),
        view.endpoint
    )
}

/// The restore advice for `nodes` (`None`: no live node serves a view).
#[must_use]
pub fn advice(nodes: &[NodeStatus]) -> Option<RestoreStatus> {
    let live: Vec<&NodeStatus> = nodes.iter().filter(|n| n.live).collect();
    let mut urls: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut bundles: BTreeMap<Option<&str>, Vec<&str>> = BTreeMap::new();
    for node in &live {
        if let Some(view) = &node.view {
            urls.entry(storage_url(view)).or_default().push(&node.node_id);
            bundles.entry(view.ca_bundle.as_deref()).or_default().push(&node.node_id);
        }
    }
    if urls.is_empty() {
        return None;
    }
    let mut problems = Vec::new();
    let without: Vec<&str> = live.iter().filter(|n| n.view.is_none()).map(|n| n.node_id.as_str()).collect();
    if !without.is_empty() {
        problems.push(format!(
            "live node(s) without an S3 view: {}; a TiKV there cannot read the backup (start its agent with --s3-listen)",
            without.join(", ")
        ));
    }
    let storage_url = if urls.len() == 1 {
        urls.keys().next().cloned()
    } else {
        let each: Vec<String> = urls.iter().map(|(url, on)| format!("{} serve {url}", on.join(", "))).collect();
        problems.push(format!(
            "the views differ, and BR sends one URL to every TiKV: {}; give every agent the same --s3-listen port, --s3-prefix and --s3-tls",
            each.join("; ")
        ));
        None
    };
    let https = storage_url.as_deref().is_some_and(|u| u.contains("endpoint=https://"));
    let ssl_cert_file = match bundles.keys().collect::<Vec<_>>()[..] {
        [Some(one)] if https => Some((*one).to_owned()),
        _ if https => {
            let each: Vec<String> =
                bundles.iter().map(|(path, on)| format!("{}: {}", on.join(", "), path.unwrap_or("-"))).collect();
            problems.push(format!(
                "the CA bundle is at different paths on the nodes; set SSL_CERT_FILE for BR and each TiKV to its node's: {}",
                each.join("; ")
            ));
            None
        }
        _ => None,
    };
    let command = storage_url.as_ref().map(|url| {
        let env = ssl_cert_file.as_ref().map(|f| format!("SSL_CERT_FILE={f} ")).unwrap_or_default();
        format!("{env}br restore full --pd \"$PD_ADDR\" --storage \"{url}\"")
    });
    Some(RestoreStatus { storage_url, command, ssl_cert_file, problems })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, live: bool, view: Option<(&str, u16, &str, Option<&str>)>) -> NodeStatus {
        NodeStatus {
            node_id: id.into(),
            address: String::new(),
            version: String::new(),
            live,
            last_heartbeat_ms: None,
            certificate_expiry: None,
            jobs: 0,
            view: view.map(|(scheme, port, prefix, bundle)| {
                ViewStatus::from(&depot_proto::registry::ViewReport {
                    scheme: scheme.into(),
                    port: port.into(),
                    bucket: "b".into(),
                    prefix: prefix.into(),
                    ca_bundle: bundle.unwrap_or_default().into(),
                    ..Default::default()
                })
            }),
        }
    }

    #[test]
    fn one_line_when_every_live_view_agrees_and_who_differs_when_not() {
        assert!(advice(&[node("a", true, None)]).is_none(), "no view, no advice");
        let agree = [
            node("a", true, Some(("http", 9100, "backup/", None))),
            node("b", true, Some(("http", 9100, "backup/", None))),
            node("gone", false, Some(("http", 1, "x/", None))),
        ];
        let got = advice(&agree).unwrap();
        assert_eq!(
            got.command.as_deref(),
            Some(
                "br restore full --pd \"$PD_ADDR\" --storage \"s3://b/backup?endpoint=http://127.0.0.1:9100&force-path-style=true\""
            )
        );
        assert!(got.problems.is_empty(), "{:?}", got.problems);

        let differ = [
            node("a", true, Some(("http", 9100, "backup/", None))),
            node("b", true, Some(("http", 9200, "backup/", None))),
            node("c", true, None),
        ];
        let got = advice(&differ).unwrap();
        assert!(got.command.is_none() && got.storage_url.is_none());
        assert_eq!(got.problems.len(), 2, "{:?}", got.problems);
        assert!(got.problems[0].contains("without an S3 view: c"), "{:?}", got.problems);
        assert!(got.problems[1].contains("a serve s3://b/backup?endpoint=http://127.0.0.1:9100"), "{:?}", got.problems);
        assert!(got.problems[1].contains("b serve s3://b/backup?endpoint=http://127.0.0.1:9200"), "{:?}", got.problems);

        let tls = [
            node("a", true, Some(("https", 9100, "backup/", Some("/data/backup/.depot/view/bundle.pem")))),
            node("b", true, Some(("https", 9100, "backup/", Some("/data/backup/.depot/view/bundle.pem")))),
        ];
        let got = advice(&tls).unwrap();
        assert!(got.command.unwrap().starts_with("SSL_CERT_FILE=/data/backup/.depot/view/bundle.pem br restore"));
    }
}
