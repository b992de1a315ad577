//! What the HTTP door's transcoding really allocates, against what it holds from its budget
//! (`http_api.max_buffered_bytes`) before it starts: a counting allocator records the peak of
//! each step, and the peak must stay within the door's own estimate
//! (`http_door::REQUEST_BYTES_PER_BYTE`, `REQUEST_BYTES_PER_VALUE`, `RESPONSE_BYTES_PER_BYTE`,
//! `json_out::TREE_BYTES_PER_VALUE`). The inputs are the ones that grow most: many tiny JSON
//! values, a payload that is one large string, many map entries, a history page, and a payload
//! whose JSON is all tiny values.
//!
//! One test (the allocator counts every thread, so nothing else may run beside it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use flowgate::http_api::json::{self, MAX_VALUES};
use flowgate::http_api::{HttpApi, OutputOptions};
use flowgate::http_door::{REQUEST_BYTES_PER_BYTE, REQUEST_BYTES_PER_VALUE, RESPONSE_BYTES_PER_BYTE};
use flowgate::temporal::wire;

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = NOW.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let now = NOW.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        } else {
            NOW.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most `work` had allocated at once beyond what was allocated before it.
fn peak_of<T>(work: impl FnOnce() -> T) -> (T, usize) {
    let before = NOW.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = work();
    (out, PEAK.load(Ordering::Relaxed) - before)
}

fn field(number: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::put_bytes_field(&mut out, number, value);
    out
}

fn varint(number: u32, value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    wire::put_varint_field(&mut out, number, value);
    out
}

/// A `json/plain` payload holding `data`.
fn payload(data: &[u8]) -> Vec<u8> {
    [field(1, &[field(1, b"encoding"), field(2, b"json/plain")].concat()), field(2, data)].concat()
}

/// A history page of `events` workflow-started events as Temporal writes them (id, time, type,
/// task id, attributes with type, queue, input, identity and ids), each input `input`.
fn history_page(events: u64, input: &[u8]) -> Vec<u8> {
    let mut page = Vec::new();
    for id in 1..=events {
        let attributes = [
            field(1, &field(1, b"DeployWorkflow")),
            field(5, &[field(1, b"deploys"), varint(2, 1)].concat()),
            field(6, &field(1, &payload(input))),
            field(14, b"01a24eb3-3a91-74e4-9b04-05c7fda25c03"),
            field(15, b"curl@ci-runner-17"),
            field(28, b"deploy-1796616698"),
        ]
        .concat();
        let event = [
            varint(1, id),
            field(2, &[varint(1, 1_796_616_698), varint(2, 513_322_562)].concat()),
            varint(3, 1),
            varint(5, 1_048_710 + id),
            field(6, &attributes),
        ]
        .concat();
        page.extend(field(1, &event));
    }
    field(1, &page)
}

#[test]
fn transcoding_allocates_no_more_than_the_door_holds_for_it() {
    let api = HttpApi::new();
    let headers = http::HeaderMap::new();
    let mut over: Vec<String> = Vec::new();
    let start = api.route(&http::Method::POST, "/api/v1/namespaces/ci/workflows/w", &headers).unwrap();

    // Requests: the door holds `len × REQUEST_BYTES_PER_BYTE + values × REQUEST_BYTES_PER_VALUE`
    // (the body included) before transcoding.
    let zeros = format!(r#"{{"workflowType":{{"name":"T"}},"input":[{}0]}}"#, "0,".repeat(MAX_VALUES - 10));
    let text = format!(r#"{{"workflowType":{{"name":"T"}},"input":["{}"]}}"#, "x".repeat(4 * 1024 * 1024 - 64));
    let objects =
        format!(r#"{{"workflowType":{{"name":"T"}},"input":[{}{{}}]}}"#, r#"{"k":1},"#.repeat(MAX_VALUES / 3 - 10));
    let memo = (0..MAX_VALUES / 3 - 10).map(|i| format!(r#""m{i}":0"#)).collect::<Vec<_>>().join(",");
    let memo = format!(r#"{{"workflowType":{{"name":"T"}},"memo":{{"fields":{{{memo}}}}}}}"#);
    for (name, body) in
        [("tiny values", &zeros), ("one 4 MiB string", &text), ("small objects", &objects), ("memo entries", &memo)]
    {
        let held = body.len() * REQUEST_BYTES_PER_BYTE + json::count_values(body.as_bytes()) * REQUEST_BYTES_PER_VALUE;
        let (message, peak) = peak_of(|| start.request_message(None, body.as_bytes(), true));
        assert!(message.is_ok(), "{name}: {message:?}");
        eprintln!("request, {name}: {} bytes, peak {peak} bytes, held {held}", body.len());
        if peak + body.len() > held {
            over.push(format!(
                "request, {name}: {} bytes of JSON allocated {peak} bytes, more than the {held} held",
                body.len()
            ));
        }
    }
    let more = format!(r#"{{"input":[{}0]}}"#, "0,".repeat(MAX_VALUES));
    let (refused, peak) = peak_of(|| start.request_message(None, more.as_bytes(), true));
    assert!(refused.unwrap_err().message.contains("more than 65536 values"));
    assert!(peak <= 8 * 1024 * 1024, "refused after {peak} bytes");

    // Answers: `wire × RESPONSE_BYTES_PER_BYTE`, plus what each payload's trees ask for.
    let history = api.route(&http::Method::GET, "/api/v1/namespaces/ci/workflows/w/history", &headers).unwrap();
    let small_values = format!("[{}0]", "0,".repeat(MAX_VALUES - 2));
    for (name, page) in [
        ("1000 events", history_page(1000, br#"{"region":"eu","replicas":3,"steps":["build","test","deploy"]}"#)),
        ("a payload of tiny values", history_page(1, small_values.as_bytes())),
        ("a payload of one string", history_page(1, format!("\"{}\"", "y".repeat(1024 * 1024)).as_bytes())),
    ] {
        for options in
            [OutputOptions { shorthand: true, pretty: true }, OutputOptions { shorthand: false, pretty: false }]
        {
            let base = page.len() * RESPONSE_BYTES_PER_BYTE;
            let mut trees = 0;
            let (json, peak) = peak_of(|| {
                history.response_json_held(&page, options, &mut |asked| {
                    trees = trees.max(asked);
                    Ok(())
                })
            });
            let json = json.unwrap();
            eprintln!(
                "answer, {name} ({options:?}): {} bytes → {} bytes of JSON, peak {peak}, held {}",
                page.len(),
                json.len(),
                base + trees
            );
            if peak > base + trees {
                over.push(format!(
                    "answer, {name}: {} bytes allocated {peak} bytes, more than the {} held",
                    page.len(),
                    base + trees
                ));
            }
            if options.shorthand && name.contains("tiny") {
                assert!(json.starts_with(b"{\n  \"history\"") && trees > 0, "the payload was written in shorthand");
            }
        }
    }
    assert!(over.is_empty(), "{over:#?}");
}
