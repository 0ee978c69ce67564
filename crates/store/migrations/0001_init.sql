-- modeltree store, schema version 1.
-- Never edit this file once it has landed: add 0002_*.sql instead (see crates/store/src/migrate.rs).
-- Timestamps are UTC text 'YYYY-MM-DDTHH:MM:SS.sssZ'. Tables are STRICT so a wrong type is an error, not a
-- silent conversion.

-- One row per model id ever indexed. `pk` is the compact key the large child tables hang off.
CREATE TABLE models (
    pk                  INTEGER PRIMARY KEY,
    id                  TEXT NOT NULL UNIQUE,
    source              TEXT NOT NULL,
    revision            TEXT NOT NULL,
    license             TEXT,
    base_model_relation TEXT,
    model_type          TEXT,
    hidden_size         INTEGER CHECK (hidden_size >= 0),
    num_layers          INTEGER CHECK (num_layers >= 0),
    vocab_size          INTEGER CHECK (vocab_size >= 0),
    config_json         TEXT CHECK (config_json IS NULL OR json_valid(config_json)),
    quantization        TEXT CHECK (quantization IS NULL OR json_valid(quantization)),
    adapter_base        TEXT,
    created_at          TEXT,
    last_modified       TEXT,
    status              TEXT NOT NULL CHECK (status IN ('indexed', 'failed', 'vanished')),
    first_seen          TEXT NOT NULL,
    updated             TEXT NOT NULL
) STRICT;

CREATE INDEX models_status ON models (status);

-- The card's `base_model` list, in the order the card gives it.
CREATE TABLE model_base_models (
    model_pk INTEGER NOT NULL REFERENCES models (pk) ON DELETE CASCADE,
    position INTEGER NOT NULL CHECK (position >= 0),
    base_id  TEXT NOT NULL,
    PRIMARY KEY (model_pk, position)
) STRICT, WITHOUT ROWID;

CREATE INDEX model_base_models_base ON model_base_models (base_id);

-- config.json `architectures`, in order.
CREATE TABLE model_architectures (
    model_pk     INTEGER NOT NULL REFERENCES models (pk) ON DELETE CASCADE,
    position     INTEGER NOT NULL CHECK (position >= 0),
    architecture TEXT NOT NULL,
    PRIMARY KEY (model_pk, position)
) STRICT, WITHOUT ROWID;

-- The files a model's revision consists of. `fingerprint` is the mtime for a local scan and the etag or
-- sha256 for a remote one. `position` keeps the order the files were given in.
CREATE TABLE files (
    model_pk    INTEGER NOT NULL REFERENCES models (pk) ON DELETE CASCADE,
    path        TEXT NOT NULL,
    position    INTEGER NOT NULL CHECK (position >= 0),
    size        INTEGER NOT NULL CHECK (size >= 0),
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (model_pk, path)
) STRICT, WITHOUT ROWID;

-- Signature schemes; `id` is `signature::Scheme::id()`, which spells out every parameter.
CREATE TABLE schemes (
    id           TEXT PRIMARY KEY,
    version      INTEGER NOT NULL CHECK (version >= 0),
    sketch_k     INTEGER NOT NULL CHECK (sketch_k >= 0),
    samples      INTEGER NOT NULL CHECK (samples >= 0),
    seed         INTEGER NOT NULL, -- the u64 seed's bits, reinterpreted as i64
    row_fraction REAL NOT NULL
) STRICT;

-- At most one signature per model: the latest one that indexed successfully.
CREATE TABLE signatures (
    model_pk     INTEGER PRIMARY KEY REFERENCES models (pk) ON DELETE CASCADE,
    scheme_id    TEXT NOT NULL REFERENCES schemes (id),
    tensor_count INTEGER NOT NULL CHECK (tensor_count >= 0)
) STRICT;

CREATE INDEX signatures_scheme ON signatures (scheme_id);

-- One row per tensor of a signature. Moments are all NULL (not computed) or `n` is set; a NULL among the float
-- moments then stands for NaN, which SQLite cannot store. `sketch` and `samples` are little-endian f32.
CREATE TABLE tensors (
    id           INTEGER PRIMARY KEY,
    model_pk     INTEGER NOT NULL REFERENCES signatures (model_pk) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    dtype        TEXT NOT NULL,
    shape        TEXT NOT NULL,
    byte_len     INTEGER NOT NULL CHECK (byte_len >= 0),
    content_hash BLOB NOT NULL CHECK (length(content_hash) = 32),
    source       TEXT NOT NULL,
    n            INTEGER CHECK (n >= 0),
    mean         REAL,
    m2           REAL,
    m3           REAL,
    m4           REAL,
    min          REAL,
    max          REAL,
    sketch_k     INTEGER CHECK (sketch_k >= 0),
    sketch       BLOB CHECK (length(sketch) % 4 = 0),
    samples      BLOB NOT NULL CHECK (length(samples) % 4 = 0),
    UNIQUE (model_pk, name),
    CHECK ((sketch_k IS NULL) = (sketch IS NULL)),
    CHECK (n IS NOT NULL OR (mean IS NULL AND m2 IS NULL AND m3 IS NULL AND m4 IS NULL AND min IS NULL
                             AND max IS NULL))
) STRICT;

CREATE TABLE runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL CHECK (kind IN ('scan', 'crawl', 'daemon')),
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    status      TEXT NOT NULL CHECK (status IN ('running', 'ok', 'failed', 'interrupted')),
    stats_json  TEXT CHECK (stats_json IS NULL OR json_valid(stats_json)),
    CHECK ((status = 'running') = (finished_at IS NULL))
) STRICT;

-- One row per completed lineage solve. The current lineage is the solve with the greatest id; AUTOINCREMENT
-- guarantees ids are never reused, so "greatest" is "latest".
CREATE TABLE solves (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     INTEGER NOT NULL REFERENCES runs (id),
    method     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    edge_count INTEGER NOT NULL CHECK (edge_count >= 0)
) STRICT;

CREATE TABLE edges (
    solve_id   INTEGER NOT NULL REFERENCES solves (id) ON DELETE CASCADE,
    parent     TEXT NOT NULL,
    child      TEXT NOT NULL,
    relation   TEXT NOT NULL,
    confidence REAL NOT NULL,
    source     TEXT NOT NULL CHECK (source IN ('weights', 'metadata', 'both')),
    PRIMARY KEY (solve_id, child, parent)
) STRICT, WITHOUT ROWID;

-- The latest failure of a model that has not indexed since. Keyed on the model id rather than `models.pk`
-- because a model can fail before it ever indexed.
CREATE TABLE failures (
    model_id TEXT PRIMARY KEY,
    source   TEXT NOT NULL,
    path     TEXT NOT NULL,
    error    TEXT NOT NULL,
    attempts INTEGER NOT NULL CHECK (attempts >= 1),
    first_at TEXT NOT NULL,
    last_at  TEXT NOT NULL
) STRICT;

CREATE TABLE checkpoints (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
