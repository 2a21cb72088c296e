//! The fuzz harness on stable Rust, for CI: the generator and the checks of
//! both targets on a few thousand pseudo-random inputs (a fixed seed, so a
//! failure reproduces), and the harness's own regression test. No coverage
//! guidance: the long runs are `cargo fuzz run` (FUZZING.md). What the runs
//! found in send-worker has unit tests beside the code it broke: a crash
//! input's bytes mean another delivery as soon as the generator changes.

use arbitrary::{Arbitrary, Unstructured};
use send_worker_fuzz::{Delivery, check_decode, check_dlq_entry};

/// splitmix64: a fixed stream of bytes without another dependency.
struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn fill(&mut self, n: usize) -> Vec<u8> {
        (0..n.div_ceil(8))
            .flat_map(|_| self.next().to_le_bytes())
            .take(n)
            .collect()
    }
}

fn run(input: &[u8]) {
    let mut u = Unstructured::new(input);
    if let Ok(d) = Delivery::arbitrary(&mut u) {
        check_decode(&d);
        check_dlq_entry(&d);
    }
}

/// The tests run on a thread with a large stack: a debug build's frames are
/// several times a release build's, and the generator nests header values
/// up to 2,000 levels deep (cloned and dropped recursively by lapin's types).
fn on_big_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(f)
        .expect("a thread")
        .join()
        .expect("the checks hold");
}

#[test]
fn pseudo_random_inputs_keep_every_property() {
    let cases: u64 = std::env::var("FUZZ_SMOKE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000);
    on_big_stack(move || {
        let mut bytes = Bytes(0x5EED);
        for _ in 0..cases {
            let len = (bytes.next() % 2_048) as usize;
            run(&bytes.fill(len));
        }
    });
}

/// How deep `v` nests, counted without recursion.
fn depth(v: &lapin::types::AMQPValue) -> usize {
    use lapin::types::AMQPValue;
    let mut deepest = 0;
    let mut pending = vec![(v, 1)];
    while let Some((v, d)) = pending.pop() {
        deepest = deepest.max(d);
        match v {
            AMQPValue::FieldArray(a) => pending.extend(a.as_slice().iter().map(|v| (v, d + 1))),
            AMQPValue::FieldTable(t) => pending.extend(t.inner().values().map(|v| (v, d + 1))),
            _ => {}
        }
    }
    deepest
}

/// The first long runs died of a stack overflow (SIGSEGV, no artifact; gdb
/// showed 120,000 frames of `BTreeMap::clone`): a deep value's leaf could be
/// deep itself, so they chained past 100,000 levels. These bytes ask for
/// that chain (branch 19, ratio true, 2,000 levels, tables, again...).
#[test]
fn deep_values_never_chain() {
    let bytes = [19u8, 0, 7, 207, 1].repeat(40);
    on_big_stack(move || {
        let v = send_worker_fuzz::value(&mut Unstructured::new(&bytes), 0).expect("a value");
        let d = depth(&v);
        assert!(d > 1_000, "the bytes no longer ask for a deep value ({d})");
        let most = send_worker_fuzz::MAX_DEPTH + send_worker_fuzz::MAX_DEEP as usize + 1;
        assert!(d <= most, "{d} levels, more than {most}");
    });
}
