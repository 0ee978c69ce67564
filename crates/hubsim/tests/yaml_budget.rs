//! Issue #11: hostile YAML front matter against `hubsim::yaml::load`, as byte literals. Each case asserts its
//! outcome, a time bound and a peak-memory bound. The cases run in one test so that this process's peak resident
//! set (`VmHWM`, reset before each case through `/proc/self/clear_refs`) measures that case alone.

use std::fs;
use std::time::{Duration, Instant};

use hubsim::yaml::{self, Budget, YamlError};
use serde_json::{Value, json};

/// Every case, hostile or not, must finish within this (a debug build on a busy machine; the bomb takes
/// milliseconds).
const TIME_LIMIT: Duration = Duration::from_secs(5);
/// And grow the peak resident set by less than this. The budget allows about 15 MiB of `Value`s.
const MEMORY_LIMIT_KIB: u64 = 64 << 10;

/// "Billion laughs": ten anchors, each a list of nine aliases of the previous one (9¹⁰ leaves), 385 bytes.
const ALIAS_BOMB: &[u8] = b"a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
j: &j [*i,*i,*i,*i,*i,*i,*i,*i,*i]
";

/// The same growth through mappings and block style.
const MAPPING_BOMB: &[u8] = b"a: &a {k1: v, k2: v, k3: v, k4: v, k5: v, k6: v, k7: v, k8: v}
b: &b {k1: *a, k2: *a, k3: *a, k4: *a, k5: *a, k6: *a, k7: *a, k8: *a}
c: &c {k1: *b, k2: *b, k3: *b, k4: *b, k5: *b, k6: *b, k7: *b, k8: *b}
d: &d {k1: *c, k2: *c, k3: *c, k4: *c, k5: *c, k6: *c, k7: *c, k8: *c}
e: &e
  k1: *d
  k2: *d
  k3: *d
  k4: *d
  k5: *d
  k6: *d
  k7: *d
  k8: *d
f: &f {k1: *e, k2: *e, k3: *e, k4: *e, k5: *e, k6: *e, k7: *e, k8: *e}
g: &g {k1: *f, k2: *f, k3: *f, k4: *f, k5: *f, k6: *f, k7: *f, k8: *f}
";

/// Nested anchors: each level anchors the whole level below, so keeping the anchors' copies alone would grow
/// quadratically; the aliases at the end repeat the largest.
const NESTED_ANCHORS: &[u8] = b"x: &a [&b [&c [&d [&e [&f [&g [&h [1, 2, 3, 4, 5, 6, 7, 8]]]]]]]]
y: [*a, *a, *a, *a, *a, *a, *a, *a, *b, *c, *d, *e, *f, *g, *h]
";

/// What a case must give.
#[derive(Debug)]
enum Expect {
    Value(Value),
    TooLong,
    TooDeep,
    TooManyNodes,
    TooManyScalarBytes,
    DuplicateKey,
    Syntax,
}

fn peak_kib(field: &str) -> u64 {
    let status = fs::read_to_string("/proc/self/status").expect("status");
    let line = status.lines().find(|l| l.starts_with(field)).expect("field");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("number")
}

fn check(name: &str, input: &[u8], expected: &Expect) {
    let text = std::str::from_utf8(input).expect("utf-8 case");
    // Resets VmHWM to the current RSS (Linux ≥ 4.0); if refused, the bound is checked against the whole run.
    let _ = fs::write("/proc/self/clear_refs", "5");
    let rss_before = peak_kib("VmRSS:");
    let started = Instant::now();
    let got = yaml::load(text, Budget::default());
    let elapsed = started.elapsed();
    let grown = peak_kib("VmHWM:").saturating_sub(rss_before);
    assert!(elapsed < TIME_LIMIT, "{name}: took {elapsed:?}");
    assert!(grown < MEMORY_LIMIT_KIB, "{name}: peak memory grew by {grown} KiB");
    let ok = match (&got, expected) {
        (Ok(Some(v)), Expect::Value(want)) => v == want,
        (Err(YamlError::TooLong { .. }), Expect::TooLong)
        | (Err(YamlError::TooDeep { .. }), Expect::TooDeep)
        | (Err(YamlError::TooManyNodes { .. }), Expect::TooManyNodes)
        | (Err(YamlError::TooManyScalarBytes { .. }), Expect::TooManyScalarBytes)
        | (Err(YamlError::DuplicateKey { .. }), Expect::DuplicateKey)
        | (Err(YamlError::Syntax(_)), Expect::Syntax) => true,
        _ => false,
    };
    let shown: String = format!("{got:?}").chars().take(300).collect();
    let want: String = format!("{expected:?}").chars().take(300).collect();
    assert!(ok, "{name}: expected {want}, got {shown}");
}

#[test]
fn issue_11_yaml_front_matter_is_budgeted() {
    let deep_block = [b"- ".repeat(20_000), b"x\n".to_vec()].concat();
    let deep_flow = [b"[".repeat(10_000), b"]".repeat(10_000)].concat();
    let at_depth_limit = [b"[".repeat(yaml::MAX_DEPTH), b"]".repeat(yaml::MAX_DEPTH)].concat();
    let over_depth_limit = [b"[".repeat(yaml::MAX_DEPTH + 1), b"]".repeat(yaml::MAX_DEPTH + 1)].concat();
    let huge_scalar = [b"k: ".to_vec(), b"x".repeat(yaml::MAX_INPUT_BYTES)].concat();
    let big_scalar = [b"k: ".to_vec(), vec![b'x'; 60 << 10]].concat();
    // A 4 KiB scalar repeated 9³ times through three levels of aliases is 2.9 MiB of text from 4.3 KiB of YAML.
    let scalar_bomb = [
        b"a: &a ".to_vec(),
        vec![b'x'; 4 << 10],
        b"\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n".to_vec(),
        b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n".to_vec(),
    ]
    .concat();
    let many_keys: Vec<u8> = [
        b"{".to_vec(),
        (0..5000).map(|i| format!("k{i}: {i}")).collect::<Vec<_>>().join(", ").into_bytes(),
        b"}".to_vec(),
    ]
    .concat();
    let mut nested_value = json!("x");
    for _ in 0..yaml::MAX_DEPTH - 1 {
        nested_value = json!([nested_value]);
    }
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("alias bomb", ALIAS_BOMB.to_vec(), Expect::TooManyNodes),
        ("mapping bomb", MAPPING_BOMB.to_vec(), Expect::TooManyNodes),
        ("scalar bomb", scalar_bomb, Expect::TooManyScalarBytes),
        ("nested anchors", NESTED_ANCHORS.to_vec(), Expect::Value(nested_anchors_value())),
        ("deep block nesting", deep_block, Expect::TooDeep),
        // yaml-rust2's scanner refuses a 256th flow level itself, before the parser hands us the 65th.
        ("deep flow nesting", deep_flow, Expect::Syntax),
        ("nesting at the limit", at_depth_limit.clone(), Expect::Value(json!(nest_empty(yaml::MAX_DEPTH)))),
        ("nesting over the limit", over_depth_limit, Expect::TooDeep),
        (
            "nesting at the limit with a scalar",
            [b"[".repeat(yaml::MAX_DEPTH - 1), b"x".to_vec(), b"]".repeat(yaml::MAX_DEPTH - 1)].concat(),
            Expect::Value(nested_value),
        ),
        ("huge scalar", huge_scalar, Expect::TooLong),
        ("big scalar within the limit", big_scalar, Expect::Value(json!({"k": "x".repeat(60 << 10)}))),
        (
            "many keys",
            many_keys,
            Expect::Value(Value::Object((0..5000).map(|i| (format!("k{i}"), json!(i))).collect())),
        ),
        (
            "aliases within the budget",
            b"base: &b org/base\nbase_model: [*b, *b]\nlicense: &l mit\nlicenses: {one: *l}\n".to_vec(),
            Expect::Value(
                json!({"base": "org/base", "base_model": ["org/base", "org/base"], "license": "mit", "licenses": {"one": "mit"}}),
            ),
        ),
        ("alias inside its own anchor", b"a: &a [1, *a]\n".to_vec(), Expect::Value(json!({"a": [1, null]}))),
        ("undefined alias", b"a: *nowhere\n".to_vec(), Expect::Syntax),
        ("duplicate key", b"license: mit\nlicense: apache-2.0\n".to_vec(), Expect::DuplicateKey),
        ("duplicate key through an alias", b"license: &k license\n*k : mit\n".to_vec(), Expect::DuplicateKey),
        // Only the first document is built; a bomb in a later one is parsed but never expanded.
        (
            "bomb in a later document",
            [b"a: 1\n---\n".to_vec(), ALIAS_BOMB.to_vec()].concat(),
            Expect::Value(json!({"a": 1})),
        ),
        (
            "typed scalars",
            b"i: 0x1f\nf: 0.5\ninf: .inf\nb: True\nn: ~\ns: '3'\nt: !!str 4\nk: !!int 5\n".to_vec(),
            Expect::Value(json!({"i": 31, "f": 0.5, "inf": ".inf", "b": true, "n": null, "s": "3", "t": "4", "k": 5})),
        ),
    ];
    for (name, input, expected) in &cases {
        check(name, input, expected);
    }
    assert_eq!(yaml::load("", Budget::default()).expect("empty"), None);
    assert_eq!(yaml::load("# only a comment\n", Budget::default()).expect("comment"), None);
}

fn nest_empty(depth: usize) -> Value {
    let mut v = json!([]);
    for _ in 1..depth {
        v = json!([v]);
    }
    v
}

fn nested_anchors_value() -> Value {
    let mut levels = vec![json!([1, 2, 3, 4, 5, 6, 7, 8])];
    for _ in 0..7 {
        let inner = levels.last().cloned().unwrap_or_default();
        levels.push(json!([inner]));
    }
    // levels[7] is `a`, levels[6] is `b`, …, levels[0] is `h`.
    let a = levels[7].clone();
    let mut y: Vec<Value> = vec![a.clone(); 8];
    y.extend((0..7).rev().map(|i| levels[i].clone()));
    json!({"x": a, "y": y})
}
