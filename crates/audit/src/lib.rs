//! The license-inheritance and declared-vs-recovered audit over the recovered Model Tree.
//!
//! Three parts connect here. [`normalize`] maps a card's free-text `license` to a canonical id and a
//! [`LicenseClass`] (SPDX ids, the Hub's own ids such as `llama3.1` or `gemma`, spelling variants, missing).
//! [`audit`] walks every recovered edge `parent → child` and applies the inheritance rules of design §7 to the
//! two licenses (a merge child inherits from each of its parents, so each parent edge is checked), then compares
//! each card's declared `base_model` and `base_model_relation` with what the weights say. Every [`Finding`] names
//! its edge, the edge's source and confidence, and both licenses raw and normalised. [`score`] measures the audit
//! against a zoo's truth (`license_conflict`, `declared_correct` per model).
//!
//! Card data is untrusted and dirty: nothing here fails on a strange license string; an unrecognised one is
//! classed `other` and only the rules that can still be judged apply.
//!
//! Pure like `lineage`: no IO, no clock, no command-line or serialisation types. The indexer turns stored models
//! into [`Model`]s, reads the truth file into a [`Truth`] and writes findings as JSON; the binary prints them.

use std::collections::{BTreeMap, BTreeSet};

use lineage::{Edge, EdgeSource, Relation};

/// Canonical ids longer than this are cut: real license ids are short, and a card can put anything there.
const MAX_LICENSE_ID_CHARS: usize = 64;

/// How bad a finding is; ordered, so `--fail-on warning` also fails on errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// What a license allows a derivative to do, as far as inheritance goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LicenseClass {
    /// Apache, MIT, BSD, CC-BY, CC0 …: derivatives may be relicensed (notices kept).
    Permissive,
    /// LGPL, MPL, EPL: file-level copyleft; for weights, dropping it is doubtful rather than plainly wrong.
    WeakCopyleft,
    /// GPL, AGPL, CC-BY-SA, ODbL: derivatives must carry the same terms.
    ShareAlike,
    /// CC-BY-NC*, research-only licenses: no commercial use, derivatives included.
    NonCommercial,
    /// CC-BY-ND, CC-BY-NC-ND: no derivatives at all (a byte-identical re-upload is redistribution).
    NoDerivatives,
    /// Llama, Gemma, Qwen, DeepSeek …: the vendor's own terms, which derivatives must carry.
    Community,
    /// OpenRAIL family: use-based restrictions that derivatives must carry.
    OpenRail,
    /// `other` or an id we do not know: the terms cannot be judged from the id.
    Other,
    /// `unknown`: the uploader says they do not know.
    Unknown,
    /// No license on the card.
    Missing,
}

impl LicenseClass {
    pub fn as_str(self) -> &'static str {
        match self {
            LicenseClass::Permissive => "permissive",
            LicenseClass::WeakCopyleft => "weak-copyleft",
            LicenseClass::ShareAlike => "share-alike",
            LicenseClass::NonCommercial => "non-commercial",
            LicenseClass::NoDerivatives => "no-derivatives",
            LicenseClass::Community => "community",
            LicenseClass::OpenRail => "openrail",
            LicenseClass::Other => "other",
            LicenseClass::Unknown => "unknown",
            LicenseClass::Missing => "missing",
        }
    }

    /// Classes whose terms bind derivatives: a child under one of these cannot simply take any license.
    fn restrictive(self) -> bool {
        matches!(
            self,
            LicenseClass::WeakCopyleft
                | LicenseClass::ShareAlike
                | LicenseClass::NonCommercial
                | LicenseClass::NoDerivatives
                | LicenseClass::Community
                | LicenseClass::OpenRail
        )
    }
}

/// A card's license, raw and normalised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct License {
    /// Exactly what the card says (`None` when it says nothing).
    pub raw: Option<String>,
    /// The canonical id (`apache-2.0`, `cc-by-nc-4.0`, `llama3.1`, …; `missing` when absent).
    pub id: String,
    pub class: LicenseClass,
    /// The family versions belong to (`llama`, `gemma`, `cc-by-sa`, `gpl`, …), to tell "another version of the
    /// same terms" from "other terms".
    pub family: String,
    /// Whether derivatives must be shared under the same terms (CC `-SA`, GPL family, ODbL …).
    pub share_alike: bool,
}

impl License {
    /// `id (class)`, or just `missing`.
    pub fn describe(&self) -> String {
        if self.class == LicenseClass::Missing {
            "missing".into()
        } else {
            format!("{} ({})", self.id, self.class.as_str())
        }
    }
}

/// Normalises a card's license string. Never fails: unrecognised ids are classed [`LicenseClass::Other`].
pub fn normalize(raw: Option<&str>) -> License {
    let raw_owned = raw.map(str::to_owned);
    let cleaned = raw.map(clean).unwrap_or_default();
    let (id, class, family, share_alike) = classify(&cleaned);
    License { raw: raw_owned, id, class, family, share_alike }
}

/// Lowercases, drops a `license:` tag prefix, and turns spaces, underscores and commas into single dashes, so
/// `Apache License, Version 2.0`, `apache_2.0` and `license:apache-2.0` meet; filler words are dropped.
fn clean(raw: &str) -> String {
    let lower = raw.trim().to_lowercase();
    let lower = lower.strip_prefix("license:").unwrap_or(&lower);
    let spaced: String = lower
        .chars()
        .map(|c| if c.is_whitespace() || matches!(c, '_' | ',' | '/' | '(' | ')') { '-' } else { c })
        .collect();
    const FILLER: [&str; 6] = ["license", "licence", "the", "version", "agreement", "v"];
    let tokens: Vec<&str> = spaced.split('-').filter(|t| !t.is_empty() && !FILLER.contains(t)).collect();
    tokens.join("-")
}

fn classify(s: &str) -> (String, LicenseClass, String, bool) {
    use LicenseClass as C;
    let done = |id: &str, class: C, family: &str, sa: bool| (id.to_owned(), class, family.to_owned(), sa);
    if s.is_empty() || s == "none" || s == "null" {
        return done("missing", C::Missing, "missing", false);
    }
    match s {
        "unknown" => return done("unknown", C::Unknown, "unknown", false),
        "other" | "custom" | "proprietary" => return done("other", C::Other, "other", false),
        "apache-2.0" | "apache2" | "apache-2" | "apache2.0" | "apache" | "al2" | "apache-v2" => {
            return done("apache-2.0", C::Permissive, "apache", false);
        }
        "mit" | "expat" | "x11" => return done("mit", C::Permissive, "mit", false),
        "cc0" | "cc0-1.0" | "cc-zero" | "public-domain" | "unlicense" | "pddl" | "wtfpl" | "0bsd" => {
            return done(s, C::Permissive, "public-domain", false);
        }
        "isc"
        | "zlib"
        | "bsl-1.0"
        | "postgresql"
        | "artistic-2.0"
        | "ecl-2.0"
        | "afl-3.0"
        | "ncsa"
        | "odc-by"
        | "etalab-2.0"
        | "lppl-1.3c"
        | "apple-ascl"
        | "openmdw-1.0"
        | "cdla-permissive-1.0"
        | "cdla-permissive-2.0"
        | "ofl-1.1"
        | "bsd"
        | "bsd-2-clause"
        | "bsd-3-clause"
        | "bsd-3-clause-clear"
        | "bsd-4-clause" => {
            let family = if s.starts_with("bsd") { "bsd" } else { s };
            return done(s, C::Permissive, family, false);
        }
        "mpl-2.0" | "mpl" | "epl-1.0" | "epl-2.0" | "ms-pl" | "lgpl" | "lgpl-2.1" | "lgpl-3.0" | "lgpl-lr" => {
            let family = s.split('-').next().unwrap_or(s);
            return done(s, C::WeakCopyleft, family, true);
        }
        "odbl" | "cdla-sharing-1.0" | "gfdl" | "eupl-1.1" | "eupl-1.2" | "osl-3.0" => {
            return done(s, C::ShareAlike, s.split('-').next().unwrap_or(s), true);
        }
        "intel-research"
        | "h-research"
        | "apple-amlr"
        | "deepfloyd-if"
        | "fair-noncommercial-research"
        | "qwen-research"
        | "mnpl"
        | "mistral-research"
        | "cc-by-nc" => {
            return done(s, C::NonCommercial, s, false);
        }
        "gemma" | "gemma-terms-of-use" | "gemma-terms-use" | "gemma-terms" => {
            return done("gemma", C::Community, "gemma", false);
        }
        "qwen" | "tongyi-qianwen" | "qianwen" => return done(s, C::Community, "qwen", false),
        "deepseek" | "deepseek-model" => return done("deepseek", C::Community, "deepseek", false),
        _ => {}
    }
    // GPL family, with `-only` / `-or-later` / `+` spellings folded into the version.
    for (prefix, family) in [("agpl", "agpl"), ("gpl", "gpl")] {
        if let Some(rest) = s.strip_prefix(prefix) {
            let version = rest.trim_start_matches('-').trim_end_matches("-only").trim_end_matches("-or-later");
            let version = version.trim_end_matches('+');
            if version.is_empty() || version.chars().all(|c| c.is_ascii_digit() || c == '.') {
                let id = if version.is_empty() { prefix.to_owned() } else { format!("{prefix}-{version}") };
                return (id, C::ShareAlike, family.to_owned(), true);
            }
        }
    }
    // Creative Commons: the elements decide the class; `cc-by-4.0`, `cc-by-nc-sa-3.0`, `cc by-nc 4.0` ….
    if let Some(rest) = s.strip_prefix("cc-by") {
        let parts: Vec<&str> = rest.split('-').filter(|p| !p.is_empty()).collect();
        let (elements, version): (Vec<&str>, Vec<&str>) =
            parts.iter().partition(|p| matches!(**p, "nc" | "sa" | "nd" | "international"));
        let elements: Vec<&str> = elements.into_iter().filter(|p| *p != "international").collect();
        let valid_version =
            version.len() <= 1 && version.iter().all(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'));
        if valid_version {
            let (nc, sa, nd) = (elements.contains(&"nc"), elements.contains(&"sa"), elements.contains(&"nd"));
            let mut id = String::from("cc-by");
            for (flag, name) in [(nc, "nc"), (nd, "nd"), (sa, "sa")] {
                if flag {
                    id.push('-');
                    id.push_str(name);
                }
            }
            let family = id.clone();
            if let Some(v) = version.first() {
                id.push('-');
                id.push_str(v);
            }
            let class = if nd {
                C::NoDerivatives
            } else if nc {
                C::NonCommercial
            } else if sa {
                C::ShareAlike
            } else {
                C::Permissive
            };
            return (id, class, family, sa);
        }
    }
    // Llama: `llama2`, `llama-3.1`, `llama3.1-community`, `meta-llama-3-community` ….
    let llama = s.trim_start_matches("meta-");
    if let Some(rest) = llama.strip_prefix("llama") {
        let version: String = rest.split('-').filter(|t| !matches!(*t, "" | "community" | "terms")).collect();
        if matches!(version.as_str(), "2" | "3" | "3.1" | "3.2" | "3.3" | "4") {
            return (format!("llama{version}"), C::Community, "llama".into(), false);
        }
    }
    if s.contains("openrail") || s.ends_with("-rail-1.0") || s.ends_with("-rail") {
        return done(s, C::OpenRail, "openrail", false);
    }
    let id: String = s.chars().take(MAX_LICENSE_ID_CHARS).collect();
    (id, C::Other, "other".into(), false)
}

/// What the audit knows of one model: its card, and whether its weights were signed (a declared base whose
/// weights were never read cannot be contradicted by them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    pub id: String,
    pub license: Option<String>,
    pub declared_bases: Vec<String>,
    pub declared_relation: Option<String>,
    pub signed: bool,
}

/// What a finding is about. License kinds judge an edge's two licenses; declared kinds compare the card with
/// the recovered tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A non-commercial parent, a child licensed for commercial use.
    NoncommercialDropped,
    /// A community-licensed (Llama, Gemma, Qwen …) parent, a child under other terms.
    CommunityDropped,
    /// Another version of the same community terms (`llama3` under `llama3.1`).
    CommunityChanged,
    /// A share-alike parent, a child not under share-alike terms.
    ShareAlikeDropped,
    /// A share-alike parent, a child under other share-alike terms.
    ShareAlikeChanged,
    /// An OpenRAIL parent, a child without the use restrictions.
    OpenrailDropped,
    /// A derivative of a no-derivatives work.
    NoDerivatives,
    /// A child without a license under a licensed parent.
    LicenseMissing,
    /// A child whose license cannot be judged (`other`, `unknown`, unrecognised) under restrictive terms.
    LicenseUnverifiable,
    /// A re-upload or quantization under a different (compatible) license.
    LicenseChanged,
    /// The weights show a parent; the card names no base model.
    DeclaredBaseMissing,
    /// The card names an indexed model that the weights do not show as an ancestor.
    DeclaredBaseWrong,
    /// The card names an ancestor further up than the parent.
    DeclaredBaseAncestor,
    /// The card's `base_model_relation` disagrees with the recovered relation.
    RelationContradicted,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NoncommercialDropped => "license-noncommercial-dropped",
            Kind::CommunityDropped => "license-community-dropped",
            Kind::CommunityChanged => "license-community-changed",
            Kind::ShareAlikeDropped => "license-share-alike-dropped",
            Kind::ShareAlikeChanged => "license-share-alike-changed",
            Kind::OpenrailDropped => "license-openrail-dropped",
            Kind::NoDerivatives => "license-no-derivatives",
            Kind::LicenseMissing => "license-missing",
            Kind::LicenseUnverifiable => "license-unverifiable",
            Kind::LicenseChanged => "license-changed",
            Kind::DeclaredBaseMissing => "declared-base-missing",
            Kind::DeclaredBaseWrong => "declared-base-wrong",
            Kind::DeclaredBaseAncestor => "declared-base-ancestor",
            Kind::RelationContradicted => "declared-relation-contradicted",
        }
    }

    pub fn is_license(self) -> bool {
        self.as_str().starts_with("license-")
    }
}

/// One audit finding, with the edge it is about and the evidence behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    pub kind: Kind,
    pub child: String,
    /// The recovered parent of the edge (`None` for a declared-base finding on a model with no recovered parent).
    pub parent: Option<String>,
    pub relation: Option<Relation>,
    pub source: Option<EdgeSource>,
    pub confidence: Option<f64>,
    pub child_license: License,
    pub parent_license: Option<License>,
    pub declared_bases: Vec<String>,
    pub declared_relation: Option<String>,
    /// For declared-base findings: the declared model at issue.
    pub declared: Option<String>,
    pub message: String,
}

impl Finding {
    /// `parent → child`, or just the child.
    pub fn edge_label(&self) -> String {
        match &self.parent {
            Some(p) => format!("{p} → {}", self.child),
            None => self.child.clone(),
        }
    }
}

/// Runs every rule over `edges` and the models' cards. Findings come sorted: most severe first, then by child,
/// parent and kind.
pub fn audit(models: &[Model], edges: &[Edge]) -> Vec<Finding> {
    let by_id: BTreeMap<&str, &Model> = models.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut parents_of: BTreeMap<&str, Vec<&Edge>> = BTreeMap::new();
    for e in edges {
        parents_of.entry(e.child.as_str()).or_default().push(e);
    }
    let empty = Model::default();
    let mut findings = Vec::new();
    for e in edges {
        let child = by_id.get(e.child.as_str()).copied().unwrap_or(&empty);
        let Some(parent) = by_id.get(e.parent.as_str()).copied() else { continue };
        let (pl, cl) = (normalize(parent.license.as_deref()), normalize(child.license.as_deref()));
        if let Some((severity, kind, message)) = license_rule(&pl, &cl, e.relation) {
            findings.push(Finding {
                severity,
                kind,
                child: e.child.clone(),
                parent: Some(e.parent.clone()),
                relation: Some(e.relation),
                source: Some(e.source),
                confidence: Some(e.confidence),
                child_license: cl,
                parent_license: Some(pl),
                declared_bases: child.declared_bases.clone(),
                declared_relation: child.declared_relation.clone(),
                declared: None,
                message,
            });
        }
    }
    for m in models {
        declared_rules(m, &by_id, &parents_of, edges, &mut findings);
    }
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.child.cmp(&b.child))
            .then_with(|| a.parent.cmp(&b.parent))
            .then_with(|| a.kind.cmp(&b.kind))
            .then_with(|| a.declared.cmp(&b.declared))
    });
    findings
}

/// The inheritance rules of design §7 for one edge; `None` when the child's license is compatible.
fn license_rule(p: &License, c: &License, relation: Relation) -> Option<(Severity, Kind, String)> {
    use LicenseClass as C;
    let (pd, cd) = (p.describe(), c.describe());
    // Nothing to inherit from a parent whose terms are not known.
    if matches!(p.class, C::Missing | C::Unknown) {
        return None;
    }
    if c.class == C::Missing {
        return Some((
            Severity::Warning,
            Kind::LicenseMissing,
            format!("the child states no license; its parent is under {pd}"),
        ));
    }
    if p.class == C::NoDerivatives && relation != Relation::Duplicate {
        return Some((
            Severity::Error,
            Kind::NoDerivatives,
            format!("the parent's {pd} forbids derivatives, and this edge is a {}", relation.as_str()),
        ));
    }
    if p.id == c.id {
        return None;
    }
    if p.class.restrictive() && matches!(c.class, C::Other | C::Unknown) {
        return Some((
            Severity::Warning,
            Kind::LicenseUnverifiable,
            format!("the parent is under {pd}; the child's {cd} cannot be checked to carry its terms"),
        ));
    }
    match p.class {
        C::Missing | C::Unknown | C::Other => None,
        C::NoDerivatives => Some((
            Severity::Error,
            Kind::NoDerivatives,
            format!("a re-upload of a {pd} work must keep its license, not {cd}"),
        )),
        C::NonCommercial if !matches!(c.class, C::NonCommercial | C::NoDerivatives) => Some((
            Severity::Error,
            Kind::NoncommercialDropped,
            format!("the parent's {pd} forbids commercial use; the child is offered under {cd}"),
        )),
        C::NonCommercial if p.share_alike && (!c.share_alike || p.family != c.family) => Some((
            Severity::Warning,
            Kind::ShareAlikeChanged,
            format!("the parent's {pd} requires the same terms for derivatives; the child has {cd}"),
        )),
        C::NonCommercial => None,
        C::Community if c.class == C::Community && c.family == p.family => Some((
            Severity::Warning,
            Kind::CommunityChanged,
            format!("the child has another version of the parent's community terms: {cd} under {pd}"),
        )),
        C::Community => Some((
            Severity::Error,
            Kind::CommunityDropped,
            format!("derivatives must carry the parent's community license {pd}; the child has {cd}"),
        )),
        C::ShareAlike if !c.share_alike => Some((
            Severity::Error,
            Kind::ShareAlikeDropped,
            format!("the parent's {pd} is share-alike; the child is not: {cd}"),
        )),
        C::ShareAlike => Some((
            Severity::Warning,
            Kind::ShareAlikeChanged,
            format!("the parent's {pd} requires the same terms; the child has other share-alike terms: {cd}"),
        )),
        C::WeakCopyleft if !c.share_alike => Some((
            Severity::Warning,
            Kind::ShareAlikeDropped,
            format!("the parent's {pd} is copyleft; the child is {cd}"),
        )),
        C::WeakCopyleft => None,
        C::OpenRail if c.class != C::OpenRail => Some((
            Severity::Warning,
            Kind::OpenrailDropped,
            format!("the parent's {pd} use restrictions must propagate; the child has {cd}"),
        )),
        C::OpenRail => None,
        // A permissive parent lets the child choose, but a bare copy or quantization changing the license is
        // worth a note: it is still the parent's work.
        C::Permissive if matches!(relation, Relation::Duplicate | Relation::Quantized) => Some((
            Severity::Info,
            Kind::LicenseChanged,
            format!("a {} of a {pd} model is offered under {cd}", relation.as_str()),
        )),
        C::Permissive => None,
    }
}

/// The Hub's relation vocabulary for a recovered relation: the card can only say `finetune`, `adapter`,
/// `quantized` or `merge`. A duplicate (the same weights, maybe recast) fits any of `finetune` and `quantized`.
fn relation_agrees(declared: &str, recovered: Relation) -> bool {
    match recovered {
        Relation::Finetune | Relation::Lora => declared == "finetune",
        Relation::Adapter => declared == "adapter",
        Relation::Quantized => declared == "quantized",
        Relation::Merge => declared == "merge",
        Relation::Duplicate => matches!(declared, "finetune" | "quantized"),
    }
}

fn declared_rules(
    m: &Model,
    by_id: &BTreeMap<&str, &Model>,
    parents_of: &BTreeMap<&str, Vec<&Edge>>,
    edges: &[Edge],
    out: &mut Vec<Finding>,
) {
    let parents: &[&Edge] = parents_of.get(m.id.as_str()).map_or(&[], Vec::as_slice);
    let license = normalize(m.license.as_deref());
    let base = |severity, kind, edge: Option<&Edge>, declared: Option<&str>, message: String| Finding {
        severity,
        kind,
        child: m.id.clone(),
        parent: edge.map(|e| e.parent.clone()),
        relation: edge.map(|e| e.relation),
        source: edge.map(|e| e.source),
        confidence: edge.map(|e| e.confidence),
        child_license: license.clone(),
        parent_license: edge.and_then(|e| by_id.get(e.parent.as_str())).map(|p| normalize(p.license.as_deref())),
        declared_bases: m.declared_bases.clone(),
        declared_relation: m.declared_relation.clone(),
        declared: declared.map(str::to_owned),
        message,
    };
    if m.declared_bases.is_empty() {
        // Only an edge the weights found can show a missing declaration (a metadata edge came from a
        // declaration elsewhere, e.g. the adapter config).
        for e in parents.iter().filter(|e| e.source == EdgeSource::Weights) {
            let message = format!(
                "the weights show {} as its {} parent; the card names no base_model",
                e.parent,
                e.relation.as_str()
            );
            out.push(base(Severity::Info, Kind::DeclaredBaseMissing, Some(e), None, message));
        }
    }
    if !m.signed {
        return;
    }
    let ancestors = ancestors(&m.id, edges);
    let nearest = parents.iter().max_by(|a, b| a.confidence.total_cmp(&b.confidence)).copied();
    for declared in &m.declared_bases {
        // An unindexed base (or one whose weights were never read) is beyond what the weights can judge.
        let Some(d) = by_id.get(declared.as_str()) else { continue };
        if !d.signed {
            continue;
        }
        if parents.iter().any(|e| e.parent == *declared) {
            continue;
        }
        if ancestors.contains(declared.as_str()) {
            let message = format!("the card names {declared}, an ancestor further up than the recovered parent");
            out.push(base(Severity::Info, Kind::DeclaredBaseAncestor, nearest, Some(declared), message));
            continue;
        }
        let message = match nearest {
            Some(e) => format!(
                "the card names {declared} as base_model, but the weights show {} ({}) and {declared} is not an ancestor",
                e.parent,
                e.relation.as_str()
            ),
            None => format!("the card names {declared} as base_model, but the weights show no relation to it"),
        };
        out.push(base(Severity::Warning, Kind::DeclaredBaseWrong, nearest, Some(declared), message));
    }
    if let Some(declared_relation) = m.declared_relation.as_deref() {
        for e in parents {
            let declared_edge = m.declared_bases.is_empty() || m.declared_bases.contains(&e.parent);
            if declared_edge && !relation_agrees(declared_relation, e.relation) {
                let message = format!(
                    "the card says base_model_relation {declared_relation}; the weights show {}",
                    e.relation.as_str()
                );
                out.push(base(Severity::Info, Kind::RelationContradicted, Some(e), None, message));
            }
        }
    }
}

/// Every model above `id` along the edges (cycle-safe).
fn ancestors<'a>(id: &str, edges: &'a [Edge]) -> BTreeSet<&'a str> {
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut frontier = vec![id];
    while let Some(node) = frontier.pop() {
        for e in edges.iter().filter(|e| e.child == node) {
            if e.parent != id && seen.insert(e.parent.as_str()) {
                frontier.push(e.parent.as_str());
            }
        }
    }
    seen
}

/// What a zoo's truth says the audit should find.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Truth {
    /// Models the truth judges for license conflicts, and those it marks as conflicting.
    pub license_judged: BTreeSet<String>,
    pub license_conflict: BTreeSet<String>,
    /// Models whose declared base the truth judges (`declared_correct` not null), and those it marks wrong.
    pub declared_judged: BTreeSet<String>,
    pub declared_wrong: BTreeSet<String>,
}

/// Precision and recall of one kind of finding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pr {
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
    pub precision: f64,
    pub recall: f64,
}

impl Pr {
    fn new(flagged: &BTreeSet<&str>, positive: &BTreeSet<String>, judged: &BTreeSet<String>) -> Pr {
        let flagged: BTreeSet<&str> = flagged.iter().copied().filter(|m| judged.contains(*m)).collect();
        let tp = flagged.iter().filter(|m| positive.contains(**m)).count();
        let fp = flagged.len() - tp;
        let fn_ = positive.len() - tp;
        // An empty denominator counts as 1, as in lineage::eval: nothing to find, nothing found wrongly.
        let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
        Pr { tp, fp, fn_, precision: ratio(tp, tp + fp), recall: ratio(tp, tp + fn_) }
    }
}

/// The audit scored per model: a model counts as flagged for a license conflict when a license finding of at
/// least warning severity names it as the child, and as flagged for a wrong declaration on a
/// `declared-base-wrong` finding. Models the truth does not judge are left out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AuditScore {
    pub license: Pr,
    pub declared: Pr,
}

pub fn score(truth: &Truth, findings: &[Finding]) -> AuditScore {
    let license: BTreeSet<&str> = findings
        .iter()
        .filter(|f| f.kind.is_license() && f.severity >= Severity::Warning)
        .map(|f| f.child.as_str())
        .collect();
    let declared: BTreeSet<&str> =
        findings.iter().filter(|f| f.kind == Kind::DeclaredBaseWrong).map(|f| f.child.as_str()).collect();
    AuditScore {
        license: Pr::new(&license, &truth.license_conflict, &truth.license_judged),
        declared: Pr::new(&declared, &truth.declared_wrong, &truth.declared_judged),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_license(raw: Option<&str>, id: &str, class: LicenseClass) {
        let l = normalize(raw);
        assert_eq!((l.id.as_str(), l.class), (id, class), "{raw:?}");
    }

    #[test]
    fn normalises_spdx_hub_and_variant_spellings() {
        use LicenseClass as C;
        for (raw, id, class) in [
            ("apache-2.0", "apache-2.0", C::Permissive),
            ("Apache License 2.0", "apache-2.0", C::Permissive),
            ("Apache License, Version 2.0", "apache-2.0", C::Permissive),
            ("apache_2.0", "apache-2.0", C::Permissive),
            ("license:apache-2.0", "apache-2.0", C::Permissive),
            ("MIT", "mit", C::Permissive),
            ("MIT License", "mit", C::Permissive),
            ("bsd-3-clause", "bsd-3-clause", C::Permissive),
            ("cc-by-4.0", "cc-by-4.0", C::Permissive),
            ("CC BY 4.0", "cc-by-4.0", C::Permissive),
            ("cc0-1.0", "cc0-1.0", C::Permissive),
            ("cc-by-sa-4.0", "cc-by-sa-4.0", C::ShareAlike),
            ("CC-BY-NC-4.0", "cc-by-nc-4.0", C::NonCommercial),
            ("cc by-nc 4.0", "cc-by-nc-4.0", C::NonCommercial),
            ("cc-by-nc-sa-4.0", "cc-by-nc-sa-4.0", C::NonCommercial),
            ("cc-by-nc-nd-4.0", "cc-by-nc-nd-4.0", C::NoDerivatives),
            ("cc-by-nd-4.0", "cc-by-nd-4.0", C::NoDerivatives),
            ("gpl-3.0", "gpl-3.0", C::ShareAlike),
            ("GPL-3.0-or-later", "gpl-3.0", C::ShareAlike),
            ("agpl-3.0", "agpl-3.0", C::ShareAlike),
            ("lgpl-2.1", "lgpl-2.1", C::WeakCopyleft),
            ("mpl-2.0", "mpl-2.0", C::WeakCopyleft),
            ("openrail", "openrail", C::OpenRail),
            ("openrail++", "openrail++", C::OpenRail),
            ("bigscience-openrail-m", "bigscience-openrail-m", C::OpenRail),
            ("creativeml-openrail-m", "creativeml-openrail-m", C::OpenRail),
            ("bigscience-bloom-rail-1.0", "bigscience-bloom-rail-1.0", C::OpenRail),
            ("llama2", "llama2", C::Community),
            ("llama3", "llama3", C::Community),
            ("llama3.1", "llama3.1", C::Community),
            ("Llama 3.1 Community License", "llama3.1", C::Community),
            ("llama-3.2", "llama3.2", C::Community),
            ("llama3.3", "llama3.3", C::Community),
            ("llama4", "llama4", C::Community),
            ("gemma", "gemma", C::Community),
            ("Gemma Terms of Use", "gemma", C::Community),
            ("qwen", "qwen", C::Community),
            ("tongyi-qianwen", "tongyi-qianwen", C::Community),
            ("deepseek", "deepseek", C::Community),
            ("other", "other", C::Other),
            ("unknown", "unknown", C::Unknown),
            ("my own terms", "my-own-terms", C::Other),
            ("llama9", "llama9", C::Other),
            ("   ", "missing", C::Missing),
        ] {
            check_license(Some(raw), id, class);
        }
        check_license(None, "missing", LicenseClass::Missing);
        assert_eq!(normalize(Some("llama3")).family, normalize(Some("llama3.1")).family);
        assert!(normalize(Some("cc-by-nc-sa-4.0")).share_alike);
        let long = "x".repeat(10_000);
        assert_eq!(normalize(Some(&long)).id.chars().count(), MAX_LICENSE_ID_CHARS);
    }

    fn check_rule(parent: Option<&str>, child: Option<&str>, relation: Relation, expected: Option<(Severity, Kind)>) {
        let got = license_rule(&normalize(parent), &normalize(child), relation).map(|(s, k, _)| (s, k));
        assert_eq!(got, expected, "{parent:?} → {child:?} ({})", relation.as_str());
    }

    #[test]
    fn inheritance_rules() {
        use Kind as K;
        use Relation::*;
        use Severity::*;
        check_rule(Some("apache-2.0"), Some("apache-2.0"), Finetune, None);
        check_rule(Some("apache-2.0"), Some("mit"), Finetune, None);
        check_rule(Some("apache-2.0"), Some("cc-by-nc-4.0"), Finetune, None);
        check_rule(Some("apache-2.0"), Some("mit"), Duplicate, Some((Info, K::LicenseChanged)));
        check_rule(Some("apache-2.0"), None, Quantized, Some((Warning, K::LicenseMissing)));
        check_rule(Some("cc-by-nc-4.0"), Some("apache-2.0"), Merge, Some((Error, K::NoncommercialDropped)));
        check_rule(Some("cc-by-nc-4.0"), Some("CC-BY-NC-4.0"), Lora, None);
        check_rule(Some("cc-by-nc-4.0"), Some("cc-by-nc-sa-4.0"), Lora, None);
        check_rule(Some("cc-by-nc-sa-4.0"), Some("cc-by-nc-4.0"), Lora, Some((Warning, K::ShareAlikeChanged)));
        check_rule(Some("cc-by-nc-4.0"), Some("llama3.1"), Adapter, Some((Error, K::NoncommercialDropped)));
        check_rule(Some("cc-by-nc-4.0"), Some("other"), Adapter, Some((Warning, K::LicenseUnverifiable)));
        check_rule(Some("cc-by-nc-4.0"), None, Adapter, Some((Warning, K::LicenseMissing)));
        check_rule(Some("llama3.1"), Some("llama3.1"), Finetune, None);
        check_rule(Some("llama3.1"), Some("llama3"), Finetune, Some((Warning, K::CommunityChanged)));
        check_rule(Some("llama3.1"), Some("apache-2.0"), Merge, Some((Error, K::CommunityDropped)));
        check_rule(Some("llama3.1"), Some("gemma"), Merge, Some((Error, K::CommunityDropped)));
        check_rule(Some("gemma"), None, Finetune, Some((Warning, K::LicenseMissing)));
        check_rule(Some("cc-by-sa-4.0"), Some("cc-by-sa-4.0"), Finetune, None);
        check_rule(Some("cc-by-sa-4.0"), Some("mit"), Finetune, Some((Error, K::ShareAlikeDropped)));
        check_rule(Some("gpl-3.0"), Some("agpl-3.0"), Finetune, Some((Warning, K::ShareAlikeChanged)));
        check_rule(Some("lgpl-3.0"), Some("mit"), Finetune, Some((Warning, K::ShareAlikeDropped)));
        check_rule(Some("openrail"), Some("creativeml-openrail-m"), Finetune, None);
        check_rule(Some("creativeml-openrail-m"), Some("mit"), Finetune, Some((Warning, K::OpenrailDropped)));
        check_rule(Some("cc-by-nd-4.0"), Some("cc-by-nd-4.0"), Finetune, Some((Error, K::NoDerivatives)));
        check_rule(Some("cc-by-nd-4.0"), Some("cc-by-nd-4.0"), Duplicate, None);
        check_rule(Some("cc-by-nd-4.0"), Some("mit"), Duplicate, Some((Error, K::NoDerivatives)));
        // Nothing to inherit from unknown terms; "other" parents only require some license.
        check_rule(None, Some("mit"), Finetune, None);
        check_rule(Some("unknown"), Some("mit"), Finetune, None);
        check_rule(Some("other"), Some("mit"), Finetune, None);
        check_rule(Some("other"), None, Finetune, Some((Warning, K::LicenseMissing)));
    }

    fn model(id: &str, license: Option<&str>, declared: &[&str], relation: Option<&str>) -> Model {
        Model {
            id: id.into(),
            license: license.map(str::to_owned),
            declared_bases: declared.iter().map(|s| s.to_string()).collect(),
            declared_relation: relation.map(str::to_owned),
            signed: true,
        }
    }

    fn edge(p: &str, c: &str, relation: Relation, source: EdgeSource) -> Edge {
        Edge { parent: p.into(), child: c.into(), relation, confidence: 0.8, source }
    }

    fn kinds(findings: &[Finding]) -> Vec<(String, &'static str, Option<String>)> {
        findings.iter().map(|f| (f.child.clone(), f.kind.as_str(), f.parent.clone())).collect()
    }

    #[test]
    fn merges_inherit_from_every_parent_and_declarations_are_checked() {
        use EdgeSource::*;
        use Relation::*;
        let models = vec![
            model("nc/base", Some("cc-by-nc-4.0"), &[], None),
            model("meta/llama", Some("llama3.1"), &[], None),
            model("a/ft", Some("cc-by-nc-4.0"), &["meta/llama"], Some("finetune")),
            model("m/merge", Some("apache-2.0"), &["nc/base", "meta/llama"], Some("merge")),
            model("q/quant", Some("cc-by-nc-4.0"), &[], Some("merge")),
            model("g/grand", Some("cc-by-nc-4.0"), &["nc/base"], Some("adapter")),
        ];
        let edges = vec![
            edge("nc/base", "a/ft", Finetune, Weights),
            edge("nc/base", "m/merge", Merge, Both),
            edge("meta/llama", "m/merge", Merge, Both),
            edge("a/ft", "q/quant", Quantized, Weights),
            edge("a/ft", "g/grand", Finetune, Weights),
        ];
        let findings = audit(&models, &edges);
        let got = kinds(&findings);
        let expected: Vec<(String, &str, Option<String>)> = vec![
            ("m/merge".into(), "license-community-dropped", Some("meta/llama".into())),
            ("m/merge".into(), "license-noncommercial-dropped", Some("nc/base".into())),
            ("a/ft".into(), "declared-base-wrong", Some("nc/base".into())),
            ("g/grand".into(), "declared-base-ancestor", Some("a/ft".into())),
            ("q/quant".into(), "declared-base-missing", Some("a/ft".into())),
            ("q/quant".into(), "declared-relation-contradicted", Some("a/ft".into())),
        ];
        let mut got_sorted = got.clone();
        let mut expected_sorted = expected.clone();
        got_sorted.sort();
        expected_sorted.sort();
        assert_eq!(got_sorted, expected_sorted, "{findings:#?}");
        // Sorted most severe first.
        assert_eq!(findings[0].severity, Severity::Error);
        assert_eq!(findings.last().map(|f| f.severity), Some(Severity::Info));
        let wrong = findings.iter().find(|f| f.kind == Kind::DeclaredBaseWrong).expect("wrong base");
        assert_eq!(wrong.declared.as_deref(), Some("meta/llama"));
        assert_eq!(wrong.source, Some(Weights));
    }

    #[test]
    fn a_root_declaring_an_indexed_base_is_wrong_and_unindexed_bases_are_not_judged() {
        let models = vec![
            model("r/one", Some("mit"), &[], None),
            model("r/two", Some("mit"), &["r/one"], None),
            model("r/three", Some("mit"), &["elsewhere/never-indexed"], None),
            Model { signed: false, ..model("r/unsigned", Some("mit"), &[], None) },
            model("r/four", Some("mit"), &["r/unsigned"], None),
        ];
        let findings = audit(&models, &[]);
        assert_eq!(kinds(&findings), vec![("r/two".into(), "declared-base-wrong", None)]);
        assert_eq!(findings[0].confidence, None);
        assert_eq!(findings[0].declared.as_deref(), Some("r/one"));
        assert_eq!(findings[0].parent, None);
    }

    #[test]
    fn metadata_edges_do_not_count_as_missing_declarations() {
        let models = vec![model("b/base", Some("mit"), &[], None), model("a/adapter", Some("mit"), &[], None)];
        let edges = vec![edge("b/base", "a/adapter", Relation::Adapter, EdgeSource::Metadata)];
        assert!(audit(&models, &edges).is_empty());
    }

    #[test]
    fn scores_per_model() {
        let truth = Truth {
            license_judged: ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect(),
            license_conflict: ["a", "b"].iter().map(|s| s.to_string()).collect(),
            declared_judged: ["a", "b"].iter().map(|s| s.to_string()).collect(),
            declared_wrong: ["b"].iter().map(|s| s.to_string()).collect(),
        };
        let f = |child: &str, kind: Kind, severity: Severity| Finding {
            severity,
            kind,
            child: child.into(),
            parent: None,
            relation: None,
            source: None,
            confidence: None,
            child_license: normalize(None),
            parent_license: None,
            declared_bases: vec![],
            declared_relation: None,
            declared: None,
            message: String::new(),
        };
        let findings = vec![
            f("a", Kind::NoncommercialDropped, Severity::Error),
            f("a", Kind::LicenseMissing, Severity::Warning),
            f("c", Kind::CommunityChanged, Severity::Warning),
            f("d", Kind::LicenseChanged, Severity::Info),
            f("b", Kind::DeclaredBaseWrong, Severity::Warning),
            f("z", Kind::DeclaredBaseWrong, Severity::Warning),
        ];
        let s = score(&truth, &findings);
        assert_eq!((s.license.tp, s.license.fp, s.license.fn_), (1, 1, 1));
        assert_eq!((s.license.precision, s.license.recall), (0.5, 0.5));
        assert_eq!((s.declared.tp, s.declared.fp, s.declared.fn_), (1, 0, 0), "z is not judged by the truth");
    }
}
