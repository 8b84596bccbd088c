//! `depot-bench list`: listings of large directories (issue 8).
//!
//! For each size N, a directory `list-N/` of N empty files is created straight in the archive
//! (files put there by hand are objects), then every key under it is listed with aws-sdk-s3,
//! once with ListObjects (V1, `Marker` = the last key, as BR pages) and once with
//! ListObjectsV2 (continuation tokens), 1,000 keys a page. Each listing is checked: N keys, in
//! S3 order, each once. Prints per size:
//!
//! - `list_keys_per_s_N`: keys per second of the slower of the two full listings;
//! - `list_seconds_N`: its wall time (target at 10^6: <= 30 s);
//! - `list_page_ms_p50_N`: the median page time over both listings;
//! - `list_v1_*` / `list_v2_*`: the same per API;
//!
//! and, with at least two sizes, `list_p50_ratio_largest_vs_smallest` (target <= 2).

use std::path::{Path, PathBuf};
use std::time::Instant;

/// Names like TiKV's SST files, 28 bytes each: `0000123_00a3f1c9_default.sst`.
fn name(i: usize) -> String {
    let mix = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    format!("{i:07}_{mix:08x}_default.sst")
}

/// Creates `dir` holding `count` empty files, on every core.
fn fill(dir: &Path, count: usize) {
    std::fs::create_dir_all(dir).expect("create the listing directory");
    let threads = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get).min(8);
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                for i in (t..count).step_by(threads) {
                    std::fs::File::create(dir.join(name(i))).expect("create an empty file");
                }
            });
        }
    });
}

/// One full listing: (wall seconds, page seconds, keys).
async fn list_all(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str, v2: bool) -> (f64, Vec<f64>, Vec<String>) {
    let mut keys: Vec<String> = Vec::new();
    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    let start = Instant::now();
    loop {
        let page_start = Instant::now();
        let (page, truncated, next) = if v2 {
            let out = client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .max_keys(1000)
                .set_continuation_token(token.take())
                .send()
                .await
                .expect("ListObjectsV2");
            let page: Vec<String> = out.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect();
            (page, out.is_truncated().unwrap_or(false), out.next_continuation_token().map(str::to_owned))
        } else {
            let out = client
                .list_objects()
                .bucket(bucket)
                .prefix(prefix)
                .max_keys(1000)
                .set_marker(keys.last().cloned())
                .send()
                .await
                .expect("ListObjects");
            let page: Vec<String> = out.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect();
            (page, out.is_truncated().unwrap_or(false), None)
        };
        pages.push(page_start.elapsed().as_secs_f64());
        assert!(!(truncated && page.is_empty()), "an empty page said it was truncated");
        keys.extend(page);
        if !truncated {
            break;
        }
        if v2 {
            token = Some(next.expect("a truncated V2 page carries a NextContinuationToken"));
        }
    }
    (start.elapsed().as_secs_f64(), pages, keys)
}

fn median_ms(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2] * 1000.0
}

/// Runs the listing bench over `archive` (the directory `client`'s server serves as `bucket`).
pub async fn run(client: aws_sdk_s3::Client, bucket: &str, archive: &Path, sizes: &[usize]) {
    let mut p50s: Vec<(usize, f64)> = Vec::new();
    for &count in sizes {
        let dir: PathBuf = archive.join(format!("list-{count}"));
        let start = Instant::now();
        fill(&dir, count);
        eprintln!("# list: {count} files made in {:.1} s", start.elapsed().as_secs_f64());
        let prefix = format!("list-{count}/");
        let mut expected: Vec<String> = (0..count).map(|i| format!("{prefix}{}", name(i))).collect();
        expected.sort_unstable();
        let mut all_pages = Vec::new();
        let mut slowest = 0.0f64;
        for (api, v2) in [("v1", false), ("v2", true)] {
            let (seconds, pages, keys) = list_all(&client, bucket, &prefix, v2).await;
            assert!(keys == expected, "{api}: the listing of {count} keys is not every key once, in order");
            println!("list_{api}_seconds_{count}={seconds:.3}");
            println!("list_{api}_keys_per_s_{count}={:.0}", count as f64 / seconds);
            println!("list_{api}_page_ms_p50_{count}={:.2}", median_ms(pages.clone()));
            slowest = slowest.max(seconds);
            all_pages.extend(pages);
        }
        let p50 = median_ms(all_pages);
        println!("list_seconds_{count}={slowest:.3}");
        println!("list_keys_per_s_{count}={:.0}", count as f64 / slowest);
        println!("list_page_ms_p50_{count}={p50:.2}");
        p50s.push((count, p50));
        // The next size needs the memory more than this one needs to stay.
        let removed = std::fs::remove_dir_all(&dir);
        removed.expect("remove the listing directory");
    }
    if let (Some(small), Some(large)) = (p50s.iter().min_by_key(|p| p.0), p50s.iter().max_by_key(|p| p.0))
        && small.0 != large.0
    {
        println!("list_p50_ratio_largest_vs_smallest={:.2}", large.1 / small.1);
    }
}
