//! Models, their signatures and their failures.
//!
//! [`Store::put_indexed`] is the one way a model and its signature enter the store, in one transaction;
//! [`Store::record_failure`] and [`Store::mark_vanished`] change its status. Readers rebuild [`ModelRecord`]s and
//! [`ModelSignature`]s from the rows; [`Store::for_each_signature`] streams a whole scheme in one statement.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use signature::{ModelSignature, Moments, Scheme, Sketch, TensorSignature};

use crate::codec;
use crate::error::{Context, Result, StoreError};
use crate::types::{FailureRecord, FileRecord, ModelRecord, ModelStatus, RetryPolicy, StoredModel};
use crate::{Store, now};

const MODEL_COLUMNS: &str = "pk, id, source, revision, license, base_model_relation, model_type, hidden_size, \
     num_layers, vocab_size, config_json, quantization, adapter_base, created_at, last_modified, status, \
     first_seen, updated, EXISTS (SELECT 1 FROM signatures s WHERE s.model_pk = models.pk)";

/// Tensor columns in the order [`decode_tensor`] reads them.
const TENSOR_COLUMNS: &str = "t.name, t.dtype, t.shape, t.byte_len, t.content_hash, t.source, t.n, t.mean, t.m2, \
     t.m3, t.m4, t.min, t.max, t.sketch_k, t.sketch, t.samples";

const SCHEME_COLUMNS: &str = "sc.id, sc.version, sc.sketch_k, sc.samples, sc.seed, sc.row_fraction";

impl Store {
    /// Stores a model that indexed: upserts its row (status `indexed`), replaces its lists, files, signature and
    /// tensor rows, and clears its failure row, all in one `BEGIN IMMEDIATE` transaction.
    ///
    /// Re-putting identical data changes nothing observable: no row is duplicated and `updated` only moves when
    /// the record, the status or the signature's scheme changed.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] when the id is empty, the signature's tensors are not strictly sorted by name, or
    /// a number does not fit SQLite's i64; [`StoreError::Write`] when a statement fails (duplicate file paths,
    /// invalid JSON text, a NaN row fraction, disk full, …). Either way nothing of the model was written.
    pub fn put_indexed(&mut self, rec: &ModelRecord, sig: &ModelSignature) -> Result<()> {
        validate(rec, sig)?;
        let write_err = |source| StoreError::Write { model: rec.id.clone(), source };
        let tx = self.write_tx().map_err(write_err)?;
        put_in(&tx, rec, sig).map_err(write_err)?;
        tx.commit().map_err(write_err)
    }

    /// Records that `id` failed at `path` with `error`: inserts its failure row or bumps its attempt count, and
    /// marks a stored model `failed`. A model that once indexed keeps its last signature, so lineage can still use
    /// it while the failure is retried. It is due again at once ([`RetryPolicy::IMMEDIATE`]). Returns the attempt
    /// count.
    ///
    /// # Errors
    /// [`StoreError::Write`] when the write fails.
    pub fn record_failure(&mut self, id: &str, source: &str, path: &str, error: &str) -> Result<u32> {
        self.record_failure_backoff(id, source, path, error, RetryPolicy::IMMEDIATE)
    }

    /// [`Store::record_failure`], due again after `policy`'s delay for this attempt count, in the same
    /// transaction. Returns the attempt count.
    ///
    /// # Errors
    /// [`StoreError::Write`] when the write fails.
    pub fn record_failure_backoff(
        &mut self,
        id: &str,
        source: &str,
        path: &str,
        error: &str,
        policy: RetryPolicy,
    ) -> Result<u32> {
        let write_err = |source| StoreError::Write { model: id.to_string(), source };
        let tx = self.write_tx().map_err(write_err)?;
        let attempts: u32 = tx
            .query_row(
                concat!(
                    "INSERT INTO failures (model_id, source, path, error, attempts, first_at, last_at) \
                     VALUES (?1, ?2, ?3, ?4, 1, ",
                    now!(),
                    ", ",
                    now!(),
                    ") ON CONFLICT (model_id) DO UPDATE SET source = excluded.source, path = excluded.path, \
                     error = excluded.error, attempts = failures.attempts + 1, last_at = excluded.last_at \
                     RETURNING attempts"
                ),
                [id, source, path, error],
                |r| r.get(0),
            )
            .map_err(write_err)?;
        let delay = format!("+{:.3} seconds", policy.delay(attempts).as_secs_f64());
        tx.execute(
            "UPDATE failures SET next_retry_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2) WHERE model_id = ?1",
            [id, delay.as_str()],
        )
        .map_err(write_err)?;
        tx.execute(
            concat!("UPDATE models SET status = 'failed', updated = ", now!(), " WHERE id = ?1 AND status <> 'failed'"),
            [id],
        )
        .map_err(write_err)?;
        tx.commit().map_err(write_err)?;
        Ok(attempts)
    }

    /// Marks a stored model `vanished` (no longer at its source); its rows are kept. Returns whether the status
    /// changed (false for an unknown id or one already vanished).
    ///
    /// # Errors
    /// [`StoreError::Write`] when the write fails.
    pub fn mark_vanished(&mut self, id: &str) -> Result<bool> {
        let write_err = |source| StoreError::Write { model: id.to_string(), source };
        let tx = self.write_tx().map_err(write_err)?;
        let changed = tx
            .execute(
                concat!(
                    "UPDATE models SET status = 'vanished', updated = ",
                    now!(),
                    " WHERE id = ?1 AND status <> 'vanished'"
                ),
                [id],
            )
            .map_err(write_err)?;
        tx.commit().map_err(write_err)?;
        Ok(changed > 0)
    }

    /// The stored revision and status of `id`, so a scan can skip a folder whose revision is unchanged.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] when the read fails, [`StoreError::Malformed`] for an unknown status word.
    pub fn model_state(&self, id: &str) -> Result<Option<(String, ModelStatus)>> {
        let row: Option<(String, String)> = self
            .conn
            .query_row("SELECT revision, status FROM models WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .op("read model state")?;
        row.map(|(revision, status)| Ok((revision, parse_status(id, &status)?))).transpose()
    }

    /// One stored model with its lists and files.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] when the read fails, [`StoreError::Malformed`] for undecodable rows.
    pub fn model(&self, id: &str) -> Result<Option<StoredModel>> {
        let tx = self.read_tx().op("read model")?;
        load_model(&tx, id).op("read model")?.map(|raw| raw.into_stored()).transpose()
    }

    /// Every stored model, sorted by id.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] when the read fails, [`StoreError::Malformed`] for undecodable rows.
    pub fn models(&self) -> Result<Vec<StoredModel>> {
        let tx = self.read_tx().op("read models")?;
        let mut raws: Vec<RawModel> = {
            let mut stmt = tx.prepare(&format!("SELECT {MODEL_COLUMNS} FROM models ORDER BY id")).op("read models")?;
            let rows = stmt.query_map([], RawModel::from_row).op("read models")?;
            rows.collect::<rusqlite::Result<_>>().op("read models")?
        };
        let index: HashMap<i64, usize> = raws.iter().enumerate().map(|(i, m)| (m.pk, i)).collect();
        let mut each = |sql: &str, f: &mut dyn FnMut(&mut RawModel, &Row<'_>) -> rusqlite::Result<()>| {
            let mut stmt = tx.prepare(sql)?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let pk: i64 = row.get(0)?;
                if let Some(&i) = index.get(&pk) {
                    f(&mut raws[i], row)?;
                }
            }
            Ok(())
        };
        each("SELECT model_pk, base_id FROM model_base_models ORDER BY model_pk, position", &mut |m, r| {
            m.record.declared_base_models.push(r.get(1)?);
            Ok(())
        })
        .op("read models")?;
        each("SELECT model_pk, architecture FROM model_architectures ORDER BY model_pk, position", &mut |m, r| {
            m.record.architectures.push(r.get(1)?);
            Ok(())
        })
        .op("read models")?;
        each("SELECT model_pk, path, size, fingerprint FROM files ORDER BY model_pk, position", &mut |m, r| {
            m.record.files.push(FileRecord { path: r.get(1)?, size: r.get(2)?, fingerprint: r.get(3)? });
            Ok(())
        })
        .op("read models")?;
        raws.into_iter().map(RawModel::into_stored).collect()
    }

    /// The stored signature of `id`, whatever its status.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] when the read fails, [`StoreError::Malformed`] for undecodable rows or a tensor
    /// count that disagrees with the signature row.
    pub fn signature(&self, id: &str) -> Result<Option<ModelSignature>> {
        let tx = self.read_tx().op("read signature")?;
        let head = tx
            .query_row(
                &format!(
                    "SELECT s.model_pk, s.tensor_count, {SCHEME_COLUMNS} FROM models m \
                     JOIN signatures s ON s.model_pk = m.pk JOIN schemes sc ON sc.id = s.scheme_id WHERE m.id = ?1"
                ),
                [id],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, u64>(1)?, RawScheme::from_row(r, 2)?)),
            )
            .optional()
            .op("read signature")?;
        let Some((pk, count, scheme)) = head else { return Ok(None) };
        let scheme = scheme.decode(id)?;
        let mut stmt = tx
            .prepare_cached(&format!("SELECT {TENSOR_COLUMNS} FROM tensors t WHERE t.model_pk = ?1 ORDER BY t.name"))
            .op("read signature")?;
        let mut rows = stmt.query([pk]).op("read signature")?;
        let mut tensors = Vec::new();
        while let Some(row) = rows.next().op("read signature")? {
            tensors.push(decode_tensor(row, 0, id)?);
        }
        check_count(id, count, tensors.len())?;
        Ok(Some(ModelSignature { scheme, tensors }))
    }

    /// Every stored signature of the scheme `scheme_id` (see [`Scheme::id`]), by model id. Models of every status
    /// are included; filter with [`Store::models`] if needed.
    ///
    /// # Errors
    /// As [`Store::for_each_signature`].
    pub fn signatures_for_scheme(&self, scheme_id: &str) -> Result<Vec<(String, ModelSignature)>> {
        let mut out = Vec::new();
        self.for_each_signature(scheme_id, |id, sig| {
            out.push((id, sig));
            Ok(())
        })?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Streams every stored signature of the scheme `scheme_id` to `f`, one model at a time, from a single
    /// statement over one snapshot, so memory holds one signature rather than all of them. Stops at the first
    /// error `f` returns.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] when the read fails, [`StoreError::Malformed`] for undecodable rows or a tensor
    /// count that disagrees with the signature row, or whatever `f` returns.
    pub fn for_each_signature(
        &self,
        scheme_id: &str,
        mut f: impl FnMut(String, ModelSignature) -> Result<()>,
    ) -> Result<()> {
        let tx = self.read_tx().op("read signatures")?;
        let scheme = tx
            .query_row(&format!("SELECT {SCHEME_COLUMNS} FROM schemes sc WHERE sc.id = ?1"), [scheme_id], |r| {
                RawScheme::from_row(r, 0)
            })
            .optional()
            .op("read signatures")?;
        let Some(scheme) = scheme else { return Ok(()) };
        let scheme = scheme.decode(scheme_id)?;
        // The outer loop walks `signatures_scheme` (ordered by model_pk within a scheme), the inner one the
        // `UNIQUE(model_pk, name)` index, so rows arrive grouped by model and sorted by name without a sort step.
        let mut stmt = tx
            .prepare(&format!(
                "SELECT s.model_pk, m.id, s.tensor_count, {TENSOR_COLUMNS} FROM signatures s \
                 JOIN models m ON m.pk = s.model_pk LEFT JOIN tensors t ON t.model_pk = s.model_pk \
                 WHERE s.scheme_id = ?1 ORDER BY s.model_pk, t.name"
            ))
            .op("read signatures")?;
        let mut rows = stmt.query([scheme_id]).op("read signatures")?;
        let mut current: Option<(i64, String, u64, Vec<TensorSignature>)> = None;
        while let Some(row) = rows.next().op("read signatures")? {
            let pk: i64 = row.get(0).op("read signatures")?;
            if current.as_ref().is_none_or(|c| c.0 != pk) {
                if let Some((_, id, count, tensors)) = current.take() {
                    check_count(&id, count, tensors.len())?;
                    f(id, ModelSignature { scheme, tensors })?;
                }
                let id: String = row.get(1).op("read signatures")?;
                let count: u64 = row.get(2).op("read signatures")?;
                current = Some((pk, id, count, Vec::with_capacity(usize::try_from(count).unwrap_or(0))));
            }
            if let Some((_, id, _, tensors)) = current.as_mut() {
                // A signature without tensors comes through the LEFT JOIN as one row of NULL tensor columns.
                let has_tensor = row.get_ref(3).op("read signatures")?.data_type() != rusqlite::types::Type::Null;
                if has_tensor {
                    tensors.push(decode_tensor(row, 3, id)?);
                }
            }
        }
        if let Some((_, id, count, tensors)) = current.take() {
            check_count(&id, count, tensors.len())?;
            f(id, ModelSignature { scheme, tensors })?;
        }
        Ok(())
    }

    /// Every model that failed and has not indexed since, sorted by model id.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] when the read fails.
    pub fn failures(&self) -> Result<Vec<FailureRecord>> {
        self.read_failures("", [])
    }

    /// The failures from `source` whose retry time has come, sorted by model id.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] when the read fails.
    pub fn due_failures(&self, source: &str) -> Result<Vec<FailureRecord>> {
        self.read_failures(
            concat!("WHERE source = ?1 AND (next_retry_at IS NULL OR next_retry_at <= ", now!(), ")"),
            [source],
        )
    }

    fn read_failures<P: rusqlite::Params>(&self, filter: &str, params: P) -> Result<Vec<FailureRecord>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT model_id, source, path, error, attempts, first_at, last_at, next_retry_at FROM failures \
                 {filter} ORDER BY model_id"
            ))
            .op("read failures")?;
        let rows = stmt
            .query_map(params, |r| {
                Ok(FailureRecord {
                    model_id: r.get(0)?,
                    source: r.get(1)?,
                    path: r.get(2)?,
                    error: r.get(3)?,
                    attempts: r.get(4)?,
                    first_at: r.get(5)?,
                    last_at: r.get(6)?,
                    next_retry_at: r.get(7)?,
                })
            })
            .op("read failures")?;
        rows.collect::<rusqlite::Result<_>>().op("read failures")
    }
}

/// Checks what the schema cannot express before the transaction starts.
fn validate(rec: &ModelRecord, sig: &ModelSignature) -> Result<()> {
    let invalid = |reason: String| Err(StoreError::Invalid { model: rec.id.clone(), reason });
    if rec.id.is_empty() {
        return invalid("empty model id".to_string());
    }
    // Sorted, duplicate-free names are what `ModelSignature::tensor` relies on and what reading back by the
    // `(model, name)` index reproduces; an unsorted list would not round-trip.
    if let Some(pair) = sig.tensors.windows(2).find(|w| w[0].name >= w[1].name) {
        return invalid(format!("tensor names not strictly sorted: {:?} then {:?}", pair[0].name, pair[1].name));
    }
    for t in &sig.tensors {
        if codec::to_i64(t.byte_len).is_none() || t.moments.is_some_and(|m| codec::to_i64(m.n).is_none()) {
            return invalid(format!("tensor {:?}: a count does not fit in i64", t.name));
        }
    }
    for f in &rec.files {
        if codec::to_i64(f.size).is_none() {
            return invalid(format!("file {:?}: size does not fit in i64", f.path));
        }
    }
    if [rec.hidden_size, rec.num_layers, rec.vocab_size].into_iter().flatten().any(|v| codec::to_i64(v).is_none()) {
        return invalid("a config number does not fit in i64".to_string());
    }
    Ok(())
}

fn put_in(tx: &Transaction<'_>, rec: &ModelRecord, sig: &ModelSignature) -> rusqlite::Result<()> {
    let scheme_id = sig.scheme.id();
    let old = load_model(tx, &rec.id)?;
    let old_scheme: Option<String> = match &old {
        Some(m) => {
            tx.query_row("SELECT scheme_id FROM signatures WHERE model_pk = ?1", [m.pk], |r| r.get(0)).optional()?
        }
        None => None,
    };
    let changed = match &old {
        Some(m) => m.record != *rec || m.status != "indexed" || old_scheme.as_deref() != Some(scheme_id.as_str()),
        None => true,
    };
    let pk: i64 = tx.query_row(
        concat!(
            "INSERT INTO models (id, source, revision, license, base_model_relation, model_type, hidden_size, \
             num_layers, vocab_size, config_json, quantization, adapter_base, created_at, last_modified, status, \
             first_seen, updated) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, 'indexed', ",
            now!(),
            ", ",
            now!(),
            ") ON CONFLICT (id) DO UPDATE SET source = excluded.source, revision = excluded.revision, \
             license = excluded.license, base_model_relation = excluded.base_model_relation, \
             model_type = excluded.model_type, hidden_size = excluded.hidden_size, \
             num_layers = excluded.num_layers, vocab_size = excluded.vocab_size, \
             config_json = excluded.config_json, quantization = excluded.quantization, \
             adapter_base = excluded.adapter_base, created_at = excluded.created_at, \
             last_modified = excluded.last_modified, status = 'indexed', \
             updated = CASE WHEN ?15 THEN excluded.updated ELSE models.updated END \
             RETURNING pk"
        ),
        params![
            rec.id,
            rec.source,
            rec.revision,
            rec.license,
            rec.base_model_relation,
            rec.model_type,
            rec.hidden_size,
            rec.num_layers,
            rec.vocab_size,
            rec.config_json,
            rec.quantization,
            rec.adapter_base,
            rec.created_at,
            rec.last_modified,
            changed,
        ],
        |r| r.get(0),
    )?;

    tx.execute("DELETE FROM model_base_models WHERE model_pk = ?1", [pk])?;
    let mut stmt =
        tx.prepare_cached("INSERT INTO model_base_models (model_pk, position, base_id) VALUES (?1, ?2, ?3)")?;
    for (position, base) in rec.declared_base_models.iter().enumerate() {
        stmt.execute(params![pk, position, base])?;
    }
    tx.execute("DELETE FROM model_architectures WHERE model_pk = ?1", [pk])?;
    let mut stmt =
        tx.prepare_cached("INSERT INTO model_architectures (model_pk, position, architecture) VALUES (?1, ?2, ?3)")?;
    for (position, arch) in rec.architectures.iter().enumerate() {
        stmt.execute(params![pk, position, arch])?;
    }
    tx.execute("DELETE FROM files WHERE model_pk = ?1", [pk])?;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO files (model_pk, path, position, size, fingerprint) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (position, file) in rec.files.iter().enumerate() {
        stmt.execute(params![pk, file.path, position, file.size, file.fingerprint])?;
    }

    put_scheme(tx, &scheme_id, &sig.scheme)?;
    // Deleting the signature cascades to its tensor rows.
    tx.execute("DELETE FROM signatures WHERE model_pk = ?1", [pk])?;
    tx.execute(
        "INSERT INTO signatures (model_pk, scheme_id, tensor_count) VALUES (?1, ?2, ?3)",
        params![pk, scheme_id, sig.tensors.len()],
    )?;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO tensors (model_pk, name, dtype, shape, byte_len, content_hash, source, n, mean, m2, m3, m4, \
         min, max, sketch_k, sketch, samples) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )?;
    for t in &sig.tensors {
        let m = t.moments;
        stmt.execute(params![
            pk,
            t.name,
            t.dtype.as_str(),
            codec::encode_shape(&t.shape),
            t.byte_len,
            &t.content_hash[..],
            codec::encode_source(t.source),
            m.map(|m| m.n),
            m.and_then(|m| codec::real_or_null(m.mean)),
            m.and_then(|m| codec::real_or_null(m.m2)),
            m.and_then(|m| codec::real_or_null(m.m3)),
            m.and_then(|m| codec::real_or_null(m.m4)),
            m.and_then(|m| codec::real_or_null(m.min)),
            m.and_then(|m| codec::real_or_null(m.max)),
            t.sketch.as_ref().map(|s| s.k),
            t.sketch.as_ref().map(|s| codec::encode_f32s(&s.values)),
            codec::encode_f32s(&t.samples),
        ])?;
    }
    tx.execute("DELETE FROM failures WHERE model_id = ?1", [&rec.id])?;
    Ok(())
}

/// Inserts the scheme row once. The id spells out every parameter, so an existing row with the same id holds the
/// same parameters.
fn put_scheme(tx: &Transaction<'_>, id: &str, scheme: &Scheme) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO schemes (id, version, sketch_k, samples, seed, row_fraction) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (id) DO NOTHING",
    )?
    .execute(params![
        id,
        scheme.version,
        scheme.sketch_k,
        scheme.samples,
        // SQLite integers are i64; the seed's bits are kept as they are and reinterpreted on the way back.
        i64::from_ne_bytes(scheme.seed.to_ne_bytes()),
        scheme.row_fraction
    ])?;
    Ok(())
}

fn check_count(id: &str, expected: u64, found: usize) -> Result<()> {
    if u64::try_from(found).ok() != Some(expected) {
        return Err(StoreError::Malformed {
            model: id.to_string(),
            reason: format!("signature lists {expected} tensors but {found} are stored"),
        });
    }
    Ok(())
}

fn parse_status(id: &str, status: &str) -> Result<ModelStatus> {
    ModelStatus::parse(status)
        .ok_or_else(|| StoreError::Malformed { model: id.to_string(), reason: format!("unknown status {status:?}") })
}

/// A models row before its status is decoded, with its lists filled in by the caller.
struct RawModel {
    pk: i64,
    record: ModelRecord,
    status: String,
    first_seen: String,
    updated: String,
    has_signature: bool,
}

impl RawModel {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<RawModel> {
        Ok(RawModel {
            pk: r.get(0)?,
            record: ModelRecord {
                id: r.get(1)?,
                source: r.get(2)?,
                revision: r.get(3)?,
                license: r.get(4)?,
                declared_base_models: Vec::new(),
                base_model_relation: r.get(5)?,
                model_type: r.get(6)?,
                architectures: Vec::new(),
                hidden_size: r.get(7)?,
                num_layers: r.get(8)?,
                vocab_size: r.get(9)?,
                config_json: r.get(10)?,
                quantization: r.get(11)?,
                adapter_base: r.get(12)?,
                created_at: r.get(13)?,
                last_modified: r.get(14)?,
                files: Vec::new(),
            },
            status: r.get(15)?,
            first_seen: r.get(16)?,
            updated: r.get(17)?,
            has_signature: r.get(18)?,
        })
    }

    fn into_stored(self) -> Result<StoredModel> {
        let status = parse_status(&self.record.id, &self.status)?;
        Ok(StoredModel {
            record: self.record,
            status,
            first_seen: self.first_seen,
            updated: self.updated,
            has_signature: self.has_signature,
        })
    }
}

/// Reads one model row and its lists (inside the caller's transaction).
fn load_model(conn: &Connection, id: &str) -> rusqlite::Result<Option<RawModel>> {
    let Some(mut raw) = conn
        .prepare_cached(&format!("SELECT {MODEL_COLUMNS} FROM models WHERE id = ?1"))?
        .query_row([id], RawModel::from_row)
        .optional()?
    else {
        return Ok(None);
    };
    let pk = raw.pk;
    raw.record.declared_base_models = conn
        .prepare_cached("SELECT base_id FROM model_base_models WHERE model_pk = ?1 ORDER BY position")?
        .query_map([pk], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    raw.record.architectures = conn
        .prepare_cached("SELECT architecture FROM model_architectures WHERE model_pk = ?1 ORDER BY position")?
        .query_map([pk], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    raw.record.files = conn
        .prepare_cached("SELECT path, size, fingerprint FROM files WHERE model_pk = ?1 ORDER BY position")?
        .query_map([pk], |r| Ok(FileRecord { path: r.get(0)?, size: r.get(1)?, fingerprint: r.get(2)? }))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(raw))
}

/// A schemes row before its numbers are checked.
struct RawScheme {
    id: String,
    version: u32,
    sketch_k: u32,
    samples: u32,
    seed: i64,
    row_fraction: f64,
}

impl RawScheme {
    fn from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<RawScheme> {
        Ok(RawScheme {
            id: r.get(at)?,
            version: r.get(at + 1)?,
            sketch_k: r.get(at + 2)?,
            samples: r.get(at + 3)?,
            seed: r.get(at + 4)?,
            row_fraction: r.get(at + 5)?,
        })
    }

    fn decode(self, model: &str) -> Result<Scheme> {
        let scheme = Scheme {
            version: self.version,
            sketch_k: self.sketch_k,
            samples: self.samples,
            seed: u64::from_ne_bytes(self.seed.to_ne_bytes()),
            row_fraction: self.row_fraction,
        };
        if scheme.id() != self.id {
            return Err(StoreError::Malformed {
                model: model.to_string(),
                reason: format!("scheme row {:?} holds the parameters of {:?}", self.id, scheme.id()),
            });
        }
        Ok(scheme)
    }
}

/// Decodes the [`TENSOR_COLUMNS`] starting at column `at`.
fn decode_tensor(row: &Row<'_>, at: usize, model: &str) -> Result<TensorSignature> {
    let malformed = |reason: String| StoreError::Malformed { model: model.to_string(), reason };
    let get_err = |e: rusqlite::Error| malformed(format!("tensor row: {e}"));
    let name: String = row.get(at).map_err(get_err)?;
    let bad = |what: &str| malformed(format!("tensor {name:?}: {what}"));
    let dtype_text: String = row.get(at + 1).map_err(get_err)?;
    let dtype = codec::decode_dtype(&dtype_text).ok_or_else(|| bad(&format!("unknown dtype {dtype_text:?}")))?;
    let shape_text: String = row.get(at + 2).map_err(get_err)?;
    let shape = codec::decode_shape(&shape_text).ok_or_else(|| bad(&format!("bad shape {shape_text:?}")))?;
    let byte_len: u64 = row.get(at + 3).map_err(get_err)?;
    let hash_ref = row.get_ref(at + 4).map_err(get_err)?;
    let content_hash: [u8; 32] = hash_ref
        .as_blob()
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| bad("content hash is not 32 bytes"))?;
    let source_text: String = row.get(at + 5).map_err(get_err)?;
    let source = codec::decode_source(&source_text).ok_or_else(|| bad(&format!("unknown source {source_text:?}")))?;
    let n: Option<u64> = row.get(at + 6).map_err(get_err)?;
    let moments = match n {
        None => None,
        Some(n) => {
            let real = |i: usize| row.get::<_, Option<f64>>(at + i).map(codec::null_as_nan).map_err(get_err);
            Some(Moments {
                n,
                mean: real(7)?,
                m2: real(8)?,
                m3: real(9)?,
                m4: real(10)?,
                min: real(11)?,
                max: real(12)?,
            })
        }
    };
    let sketch_k: Option<u32> = row.get(at + 13).map_err(get_err)?;
    let sketch_blob = row.get_ref(at + 14).map_err(get_err)?.as_blob_or_null().map_err(|e| bad(&e.to_string()))?;
    let sketch = match (sketch_k, sketch_blob) {
        (None, None) => None,
        (Some(k), Some(bytes)) => Some(Sketch {
            k,
            values: codec::decode_f32s(bytes).ok_or_else(|| bad("sketch length not a multiple of 4"))?,
        }),
        _ => return Err(bad("sketch and its k disagree")),
    };
    let samples_blob = row.get_ref(at + 15).map_err(get_err)?.as_blob().map_err(|e| bad(&e.to_string()))?;
    let samples = codec::decode_f32s(samples_blob).ok_or_else(|| bad("samples length not a multiple of 4"))?;
    Ok(TensorSignature { name, dtype, shape, byte_len, content_hash, source, moments, sketch, samples })
}

#[cfg(test)]
mod tests {
    use signature::Scheme;

    use super::*;
    use crate::test_support::{
        ALL_DTYPES, ALL_SOURCES, Rng, assert_bit_equal, bare_record, full_record, odd_scheme, random_signature,
    };

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store.db")).expect("open");
        (dir, store)
    }

    /// Row counts of every table, to show what a write did or did not add.
    fn counts(store: &Store) -> Vec<(&'static str, i64)> {
        ["models", "model_base_models", "model_architectures", "files", "schemes", "signatures", "tensors", "failures"]
            .into_iter()
            .map(|t| {
                let n = store.conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0)).expect("count");
                (t, n)
            })
            .collect()
    }

    #[test]
    fn signature_round_trips_bit_exact() {
        let (_dir, mut store) = open();
        let mut rng = Rng::new(7);
        let sig = random_signature(&mut rng, odd_scheme(), 90);
        // The generator must really cover every variant, or this test proves less than it claims.
        for d in ALL_DTYPES {
            assert!(sig.tensors.iter().any(|t| t.dtype == d), "{d:?} not covered");
        }
        for s in ALL_SOURCES {
            assert!(sig.tensors.iter().any(|t| t.source == s), "{s:?} not covered");
        }
        assert!(sig.tensors.iter().any(|t| t.moments.is_none() && t.sketch.is_none() && t.shape.is_empty()));
        let rec = full_record("org/model", "abc123");
        store.put_indexed(&rec, &sig).expect("put");

        let back = store.signature("org/model").expect("read").expect("stored");
        assert_bit_equal(&back, &sig);
        let stored = store.model("org/model").expect("read").expect("stored");
        assert_eq!(stored.record, rec);
        assert_eq!(stored.status, ModelStatus::Indexed);
        assert!(stored.has_signature);

        let all = store.signatures_for_scheme(&odd_scheme().id()).expect("read all");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, "org/model");
        assert_bit_equal(&all[0].1, &sig);
    }

    #[test]
    fn nan_moments_come_back_as_nan_and_blobs_keep_nan_payloads() {
        let (_dir, mut store) = open();
        let mut sig = random_signature(&mut Rng::new(1), Scheme::default(), 3);
        let nan = f32::from_bits(0x7fc0_0abc);
        sig.tensors[0].moments = Some(Moments { n: 0, mean: f64::NAN, ..Moments::default() });
        sig.tensors[0].samples = vec![nan, 1.0];
        sig.tensors[0].sketch = Some(Sketch { k: 1, values: vec![nan] });
        store.put_indexed(&bare_record("m", "r"), &sig).expect("put");
        let back = store.signature("m").expect("read").expect("stored");
        let t = &back.tensors[0];
        let m = t.moments.expect("moments kept");
        assert!(m.mean.is_nan());
        // The empty-moments defaults are infinite and must survive as such.
        assert_eq!((m.n, m.min, m.max), (0, f64::INFINITY, f64::NEG_INFINITY));
        assert_eq!(t.samples[0].to_bits(), nan.to_bits());
        assert_eq!(t.sketch.as_ref().map(|s| s.values[0].to_bits()), Some(nan.to_bits()));
        assert_bit_equal(
            &ModelSignature { scheme: back.scheme, tensors: back.tensors[1..].to_vec() },
            &ModelSignature { scheme: sig.scheme, tensors: sig.tensors[1..].to_vec() },
        );
    }

    #[test]
    fn re_put_is_idempotent() {
        let (_dir, mut store) = open();
        let rec = full_record("org/a", "r1");
        let sig = random_signature(&mut Rng::new(2), odd_scheme(), 12);
        store.put_indexed(&rec, &sig).expect("put");
        let before = counts(&store);
        let model_before = store.model("org/a").expect("read");
        store.put_indexed(&rec, &sig).expect("re-put");
        store.put_indexed(&rec, &sig).expect("re-put");
        assert_eq!(counts(&store), before);
        assert_eq!(store.model("org/a").expect("read"), model_before);
        assert_bit_equal(&store.signature("org/a").expect("read").expect("stored"), &sig);
        assert_eq!(
            before,
            vec![
                ("models", 1),
                ("model_base_models", 2),
                ("model_architectures", 2),
                ("files", 2),
                ("schemes", 1),
                ("signatures", 1),
                ("tensors", 12),
                ("failures", 0)
            ]
        );
    }

    #[test]
    fn a_new_revision_replaces_everything() {
        let (_dir, mut store) = open();
        store
            .put_indexed(&full_record("org/a", "r1"), &random_signature(&mut Rng::new(3), odd_scheme(), 12))
            .expect("put");
        let first = store.model("org/a").expect("read").expect("stored");
        let rec2 = bare_record("org/a", "r2");
        let sig2 = random_signature(&mut Rng::new(4), Scheme::default(), 5);
        std::thread::sleep(std::time::Duration::from_millis(5));
        store.put_indexed(&rec2, &sig2).expect("put");
        let second = store.model("org/a").expect("read").expect("stored");
        assert_eq!(second.record, rec2);
        assert_eq!(second.first_seen, first.first_seen);
        assert!(second.updated > first.updated, "{} !> {}", second.updated, first.updated);
        assert_bit_equal(&store.signature("org/a").expect("read").expect("stored"), &sig2);
        let c = counts(&store);
        assert_eq!(c[1..4], [("model_base_models", 0), ("model_architectures", 0), ("files", 0)]);
        assert_eq!(c[5..7], [("signatures", 1), ("tensors", 5)]);
        assert!(store.signatures_for_scheme(&odd_scheme().id()).expect("read").is_empty());
        assert_eq!(store.signatures_for_scheme(&Scheme::default().id()).expect("read").len(), 1);
    }

    fn check_invalid(rec: &ModelRecord, sig: &ModelSignature, expected: &str) {
        let (_dir, mut store) = open();
        let err = store.put_indexed(rec, sig).expect_err("must be refused");
        assert_eq!(err.to_string().replace("model.layers.", ""), expected);
        assert!(store.models().expect("read").is_empty());
    }

    #[test]
    fn unstorable_records_are_refused_whole() {
        let sig = random_signature(&mut Rng::new(5), odd_scheme(), 3);
        let mut unsorted = sig.clone();
        unsorted.tensors.swap(0, 1);
        check_invalid(
            &bare_record("m", "r"),
            &unsorted,
            r#"model m is not storable: tensor names not strictly sorted: "001.weight" then "000.weight""#,
        );
        let mut duplicate = sig.clone();
        duplicate.tensors[1].name = duplicate.tensors[0].name.clone();
        check_invalid(
            &bare_record("m", "r"),
            &duplicate,
            r#"model m is not storable: tensor names not strictly sorted: "000.weight" then "000.weight""#,
        );
        let mut huge = sig.clone();
        huge.tensors[2].byte_len = u64::MAX;
        check_invalid(
            &bare_record("m", "r"),
            &huge,
            r#"model m is not storable: tensor "002.weight": a count does not fit in i64"#,
        );
        check_invalid(&bare_record("", "r"), &sig, "model  is not storable: empty model id");
        // Constraint failures in the middle of the transaction: nothing of the model remains.
        let mut dup_files = full_record("m", "r");
        dup_files.files.push(dup_files.files[0].clone());
        check_invalid(&dup_files, &sig, "cannot store model m");
        let mut bad_json = full_record("m", "r");
        bad_json.config_json = Some("{not json".to_string());
        check_invalid(&bad_json, &sig, "cannot store model m");
    }

    #[test]
    fn failed_insert_keeps_the_previous_version() {
        let (_dir, mut store) = open();
        let sig = random_signature(&mut Rng::new(6), odd_scheme(), 7);
        store.put_indexed(&full_record("m", "r1"), &sig).expect("put");
        let before = counts(&store);
        let mut bad = full_record("m", "r2");
        bad.files.push(bad.files[0].clone());
        store.put_indexed(&bad, &random_signature(&mut Rng::new(8), odd_scheme(), 2)).expect_err("duplicate path");
        assert_eq!(counts(&store), before);
        assert_eq!(store.model_state("m").expect("read"), Some(("r1".to_string(), ModelStatus::Indexed)));
        assert_bit_equal(&store.signature("m").expect("read").expect("kept"), &sig);
    }

    #[test]
    fn failures_count_attempts_and_keep_the_last_signature() {
        let (_dir, mut store) = open();
        // A model that never indexed: only a failure row.
        assert_eq!(store.record_failure("new/m", "/src", "a.safetensors", "bad header").expect("fail"), 1);
        assert_eq!(store.record_failure("new/m", "/src", "b.safetensors", "truncated").expect("fail"), 2);
        assert_eq!(store.model_state("new/m").expect("read"), None);
        let f = store.failures().expect("read");
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].model_id.as_str(), f[0].path.as_str(), f[0].error.as_str(), f[0].attempts),
            ("new/m", "b.safetensors", "truncated", 2)
        );
        assert!(f[0].first_at <= f[0].last_at);

        // A model that indexed, then fails: marked failed, signature kept.
        let sig = random_signature(&mut Rng::new(9), odd_scheme(), 4);
        store.put_indexed(&full_record("old/m", "r1"), &sig).expect("put");
        assert_eq!(store.record_failure("old/m", "/src", "x", "io error").expect("fail"), 1);
        assert_eq!(store.model_state("old/m").expect("read"), Some(("r1".to_string(), ModelStatus::Failed)));
        assert_bit_equal(&store.signature("old/m").expect("read").expect("kept"), &sig);
        assert_eq!(store.failures().expect("read").len(), 2);

        // Indexing again clears the failure.
        store.put_indexed(&full_record("new/m", "r1"), &sig).expect("put");
        store.put_indexed(&full_record("old/m", "r1"), &sig).expect("put");
        assert!(store.failures().expect("read").is_empty());
        assert_eq!(store.model_state("old/m").expect("read"), Some(("r1".to_string(), ModelStatus::Indexed)));
    }

    #[test]
    fn failures_back_off_and_fall_due() {
        let (_dir, mut store) = open();
        let policy = RetryPolicy { base: std::time::Duration::from_secs(60), cap: std::time::Duration::from_secs(300) };
        assert_eq!(
            [1, 2, 3, 4, 5, 40, u32::MAX].map(|a| policy.delay(a).as_secs()),
            [60, 120, 240, 300, 300, 300, 300]
        );
        assert_eq!(RetryPolicy::IMMEDIATE.delay(7), std::time::Duration::ZERO);
        store.record_failure_backoff("a/later", "hub", "c1", "boom", policy).expect("fail");
        store.record_failure("a/now", "hub", "c1", "boom").expect("fail");
        store.record_failure("b/other-source", "elsewhere", "c1", "boom").expect("fail");
        let due: Vec<String> = store.due_failures("hub").expect("due").into_iter().map(|f| f.model_id).collect();
        assert_eq!(due, ["a/now"]);
        let all = store.failures().expect("read");
        let later = all.iter().find(|f| f.model_id == "a/later").expect("recorded");
        let (next, last) = (later.next_retry_at.clone().expect("scheduled"), later.last_at.clone());
        assert!(next > last, "{next} after {last}");
        // The second attempt waits twice as long: still not due.
        store.record_failure_backoff("a/later", "hub", "c2", "boom", policy).expect("fail");
        assert_eq!(store.due_failures("hub").expect("due").len(), 1);
        let sig = random_signature(&mut Rng::new(11), odd_scheme(), 2);
        store.put_indexed(&bare_record("a/now", "r"), &sig).expect("put");
        assert!(store.due_failures("hub").expect("due").is_empty());
    }

    #[test]
    fn vanished_models_keep_their_rows() {
        let (_dir, mut store) = open();
        let sig = random_signature(&mut Rng::new(10), odd_scheme(), 2);
        store.put_indexed(&bare_record("m", "r"), &sig).expect("put");
        assert!(store.mark_vanished("m").expect("vanish"));
        assert!(!store.mark_vanished("m").expect("vanish again"));
        assert!(!store.mark_vanished("unknown").expect("vanish unknown"));
        assert_eq!(store.model_state("m").expect("read"), Some(("r".to_string(), ModelStatus::Vanished)));
        assert!(store.signature("m").expect("read").is_some());
    }

    #[test]
    fn models_lists_everything_in_id_order() {
        let (_dir, mut store) = open();
        let sig = random_signature(&mut Rng::new(11), odd_scheme(), 2);
        let b = full_record("b", "r");
        let a = bare_record("a", "r");
        let mut c = full_record("c", "r");
        c.files.reverse();
        c.declared_base_models.reverse();
        for rec in [&b, &a, &c] {
            store.put_indexed(rec, &sig).expect("put");
        }
        store.record_failure("c", "/src", "p", "e").expect("fail");
        let models = store.models().expect("read");
        let got: Vec<(&ModelRecord, ModelStatus)> = models.iter().map(|m| (&m.record, m.status)).collect();
        assert_eq!(got, vec![(&a, ModelStatus::Indexed), (&b, ModelStatus::Indexed), (&c, ModelStatus::Failed)]);
        for m in &models {
            assert_eq!(store.model(&m.record.id).expect("read").as_ref(), Some(m));
        }
    }

    #[test]
    fn signatures_stream_per_scheme_including_empty_ones() {
        let (_dir, mut store) = open();
        let mut expected = Vec::new();
        for i in 0..25 {
            let id = format!("org/m{:02}", 24 - i);
            let sig = random_signature(&mut Rng::new(100 + i), odd_scheme(), (i % 5) as usize);
            store.put_indexed(&bare_record(&id, "r"), &sig).expect("put");
            expected.push((id, sig));
        }
        store
            .put_indexed(&bare_record("other", "r"), &random_signature(&mut Rng::new(1), Scheme::default(), 3))
            .expect("put");
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        let got = store.signatures_for_scheme(&odd_scheme().id()).expect("read");
        assert_eq!(got.len(), expected.len());
        for ((gid, gsig), (eid, esig)) in got.iter().zip(&expected) {
            assert_eq!(gid, eid);
            assert_bit_equal(gsig, esig);
        }
        assert!(store.signatures_for_scheme("v9-unknown").expect("read").is_empty());
        // The callback's error stops the stream and comes back as is.
        let mut seen = 0;
        let err = store
            .for_each_signature(&odd_scheme().id(), |_, _| {
                seen += 1;
                if seen == 3 { Err(StoreError::FinishAsRunning) } else { Ok(()) }
            })
            .expect_err("stopped");
        assert!(matches!(err, StoreError::FinishAsRunning));
        assert_eq!(seen, 3);
    }

    #[test]
    fn bulk_read_needs_no_sort_step() {
        let (_dir, store) = open();
        let plan: Vec<String> = {
            let mut stmt = store
                .conn
                .prepare(&format!(
                    "EXPLAIN QUERY PLAN SELECT s.model_pk, m.id, s.tensor_count, {TENSOR_COLUMNS} FROM signatures s \
                     JOIN models m ON m.pk = s.model_pk LEFT JOIN tensors t ON t.model_pk = s.model_pk \
                     WHERE s.scheme_id = ?1 ORDER BY s.model_pk, t.name"
                ))
                .expect("prepare");
            stmt.query_map(["x"], |r| r.get::<_, String>(3))
                .expect("plan")
                .collect::<rusqlite::Result<_>>()
                .expect("plan")
        };
        assert!(plan.iter().all(|l| !l.contains("TEMP B-TREE")), "{plan:#?}");
        assert!(plan.iter().any(|l| l.contains("signatures_scheme")), "{plan:#?}");
    }

    #[test]
    fn malformed_rows_are_reported_not_guessed() {
        let (_dir, mut store) = open();
        let sig = random_signature(&mut Rng::new(12), odd_scheme(), 3);
        store.put_indexed(&bare_record("m", "r"), &sig).expect("put");
        store.conn.execute("UPDATE tensors SET shape = '1x' WHERE name = 'model.layers.001.weight'", []).expect("edit");
        let err = store.signature("m").expect_err("bad shape");
        assert_eq!(
            err.to_string(),
            r#"stored data of m is malformed: tensor "model.layers.001.weight": bad shape "1x""#
        );
        store.conn.execute("UPDATE tensors SET shape = '1' ", []).expect("edit");
        store.conn.execute("DELETE FROM tensors WHERE name = 'model.layers.002.weight'", []).expect("edit");
        let err = store.signature("m").expect_err("missing tensor");
        assert_eq!(err.to_string(), "stored data of m is malformed: signature lists 3 tensors but 2 are stored");
        let err = store.signatures_for_scheme(&odd_scheme().id()).expect_err("missing tensor");
        assert_eq!(err.to_string(), "stored data of m is malformed: signature lists 3 tensors but 2 are stored");
    }
}
