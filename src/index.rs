//! Nearest-neighbour search over exemplar vectors.
//!
//! [`NeighbourIndex`] is the seam: [`HnswIndex`] (approximate, `hnsw_rs`) is what the router uses;
//! [`ExactIndex`] (brute force) is the yardstick for recall and a fine choice for tiny sets.
//! Vectors are expected L2-normalised (as every [`Embedder`](crate::embed::Embedder) returns
//! them), so similarity is a dot product.
//!
//! ```
//! use semroute::index::{HnswIndex, NeighbourIndex};
//!
//! let vectors = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.6, 0.8]];
//! let index = HnswIndex::build(&vectors)?;
//! let hits = index.search(&[1.0, 0.0], 2);
//! assert_eq!(hits[0].position, 0);
//! assert!((hits[0].similarity - 1.0).abs() < 1e-6);
//! assert_eq!(hits[1].position, 2);
//! # Ok::<(), semroute::Error>(())
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hnsw_rs::anndists::dist::Distance;
use hnsw_rs::hnsw::Hnsw;

use crate::error::{Error, Result};

/// One search hit: the position of an exemplar in its set and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Position in the exemplar set (and in the vectors the index was built from).
    pub position: usize,
    /// Cosine similarity in `[-1, 1]`.
    pub similarity: f32,
}

/// Finds the `k` vectors most similar to a query, best first.
pub trait NeighbourIndex: Send + Sync {
    /// The `k` nearest hits (fewer if the index holds fewer), by decreasing similarity.
    fn search(&self, query: &[f32], k: usize) -> Vec<Hit>;

    /// Number of indexed vectors.
    fn len(&self) -> usize;

    /// Whether the index is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Cosine distance for unit vectors: `1 - a·b`, clamped so rounding never makes it negative
/// (hnsw_rs's own `DistDot` asserts on that and would panic).
#[derive(Debug, Default, Clone, Copy)]
struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).clamp(0.0, 2.0)
    }
}

/// Dot product of two equally long vectors: AVX2+FMA when the CPU has it (checked at run time),
/// portable code otherwise.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features `dot_avx2` is compiled for.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise the loop.
    let mut acc = [0.0f32; 8];
    let chunks = a.len().min(b.len()) / 8 * 8;
    for (ca, cb) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let tail: f32 = a[chunks..].iter().zip(&b[chunks..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let chunks = n / 32 * 32;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i < chunks {
        for (j, s) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8 * j + 8 <= chunks <= n, within both slices.
            let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i + 8 * j)), _mm256_loadu_ps(pb.add(i + 8 * j))) };
            *s = _mm256_fmadd_ps(x, y, *s);
        }
        i += 32;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds exactly eight f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    lanes.iter().sum::<f32>() + dot_portable(&a[chunks..n], &b[chunks..n])
}

/// How far from 1 the length of an indexed vector may be. Embedders normalise in `f32` (lengths
/// come out within about 1e-6 of 1); one damaged exponent bit moves a component by a factor of 2 or
/// more, and the length far past this.
const UNIT_TOLERANCE: f32 = 1e-3;

/// Why vector `i` cannot be indexed: a NaN or infinite component, or a length other than 1
/// (similarity is a dot product, so a longer vector would outscore every true neighbour). The
/// zero vector is allowed: it is how a static embedder says a text holds no token it knows (a
/// Chinese prompt for an English vocabulary), and it is similar to nothing.
fn unit_problem(i: usize, v: &[f32]) -> Option<String> {
    if v.iter().any(|x| !x.is_finite()) {
        return Some(format!("vector {i} holds a NaN or infinite value"));
    }
    if v.iter().all(|x| *x == 0.0) {
        return None;
    }
    // (Finite components can still overflow the sum of squares.)
    let length = dot(v, v).sqrt();
    if !length.is_finite() || (length - 1.0).abs() > UNIT_TOLERANCE {
        return Some(format!("vector {i} is not of unit length (length {length}; embeddings are L2-normalised)"));
    }
    None
}

/// The dimension of `vectors`, all alike, each finite and of unit length; else an error naming the
/// first that is not.
fn check_vectors(vectors: &[Vec<f32>]) -> Result<usize> {
    let dim = check_dimensions(vectors)?;
    if let Some(problem) = vectors.iter().enumerate().find_map(|(i, v)| unit_problem(i, v)) {
        return Err(Error::Index(problem));
    }
    Ok(dim)
}

fn check_dimensions(vectors: &[Vec<f32>]) -> Result<usize> {
    let dim = vectors.first().map_or(0, Vec::len);
    if let Some((i, v)) = vectors.iter().enumerate().find(|(_, v)| v.len() != dim) {
        return Err(Error::Index(format!("vector {i} has {} dimensions, vector 0 has {dim}", v.len())));
    }
    Ok(dim)
}

/// Approximate search with a hierarchical navigable small-world graph over unit vectors (finite,
/// of length 1 within 1e-3; others are refused).
///
/// `hnsw_rs` builds the graph (in parallel for large sets); the finished graph is then copied into
/// flat arrays (neighbour lists as `u32` ids, vectors in one contiguous buffer) and searched by our
/// own short beam search. Why: `hnsw_rs`'s search allocates an `Arc` and hashes every node it
/// visits, which measured 1.3 ms per query at 100k vectors on our 2-core machine; the same graph
/// searched flat costs a fraction of that (see `benches/route.rs`).
///
/// Up to [`EXACT_SCAN_UP_TO`] vectors a search scans them all instead of walking the graph: as
/// fast there (35 µs at 1k against 40 µs for the graph, `cargo bench --bench route`), and exact.
/// The graph's pruned neighbour lists can leave a node that no search reaches: on
/// multilingual-e5-small's built-in exemplars, whose similarities all lie between 0.7 and 1, two
/// of 475 exemplars were not found even when searched with their own vector.
pub struct HnswIndex {
    dim: usize,
    vectors: Slab<f32>,
    /// Neighbour lists, `layers[l]` for layer `l` (0 is the bottom, holding every node).
    layers: Vec<Links>,
    entry: u32,
    ef_search: usize,
    /// Up to this many vectors, a search scans them all.
    scan_up_to: usize,
}

impl std::fmt::Debug for HnswIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswIndex")
            .field("len", &self.len())
            .field("layers", &self.layers.len())
            .field("ef_search", &self.ef_search)
            .finish()
    }
}

impl HnswIndex {
    /// Builds an index over `vectors` (position `i` is vector `i`; each finite and of unit length,
    /// else an [`Error::Index`] naming it) with 16 links per node, ef 100
    /// at build and 128 at search. At ef 64, the bench's synthetic 384-d data measured recall@8
    /// of 1.000 at 1k vectors, 0.996 at 10k and 0.973 at 100k; real prompt embeddings are
    /// harder: 10k dataset prompts against 427 hand-written queries gave recall@10 of 0.850 at
    /// ef 64 and 0.932 at ef 128 (0.21 ms a search; see the `store_bench` example).
    pub fn build(vectors: &[Vec<f32>]) -> Result<Self> {
        Self::build_with(vectors, 16, 100, 128)
    }

    /// Builds with explicit HNSW parameters: `links` per node (2..=256), `ef_construction`, and
    /// the default `ef_search` (raised to `k` when a search asks for more).
    pub fn build_with(vectors: &[Vec<f32>], links: usize, ef_construction: usize, ef_search: usize) -> Result<Self> {
        let dim = check_vectors(vectors)?;
        if !(2..=256).contains(&links) {
            return Err(Error::Index(format!("links per node must be within 2..=256, got {links}")));
        }
        if vectors.len() > u32::MAX as usize {
            return Err(Error::Index("more than 4 billion vectors".into()));
        }
        if vectors.is_empty() {
            // hnsw_rs cannot iterate an empty graph (it unwraps a missing entry point).
            return Ok(HnswIndex {
                dim,
                vectors: Slab::Owned(Vec::new()),
                layers: vec![Links { offsets: Slab::Owned(vec![0]), links: Slab::Owned(Vec::new()) }],
                entry: 0,
                ef_search: ef_search.max(1),
                scan_up_to: EXACT_SCAN_UP_TO,
            });
        }
        let graph: Hnsw<'static, f32, UnitCosine> = Hnsw::new(links, vectors.len().max(1), 16, ef_construction.max(links), UnitCosine);
        let data: Vec<(&Vec<f32>, usize)> = vectors.iter().zip(0..).collect();
        if data.len() >= 1000 {
            graph.parallel_insert(&data);
        } else {
            for (v, i) in data {
                graph.insert((v.as_slice(), i));
            }
        }

        // Freeze the graph into flat arrays.
        let n = vectors.len();
        let mut lists: Vec<Vec<Vec<u32>>> = vec![Vec::new(); n];
        let mut entry = (0u32, 0u8);
        for point in graph.get_point_indexation() {
            let id = point.get_origin_id();
            let level = point.get_point_id().0;
            if level >= entry.1 {
                entry = (id as u32, level);
            }
            lists[id] = point.get_neighborhood_id().into_iter().map(|layer| layer.into_iter().map(|nb| nb.d_id as u32).collect()).collect();
        }
        // One offsets array per layer, indexed by node, so that a saved graph is used in place.
        let mut layers: Vec<(Vec<u32>, Vec<u32>)> = vec![(vec![0u32], Vec::new()); entry.1 as usize + 1];
        for node in lists {
            let mut node = node.into_iter();
            for (offsets, links) in layers.iter_mut() {
                links.extend(node.next().unwrap_or_default());
                offsets.push(links.len() as u32);
            }
        }
        let mut flat = Vec::with_capacity(n * dim);
        for v in vectors {
            flat.extend_from_slice(v);
        }
        Ok(HnswIndex {
            dim,
            vectors: Slab::Owned(flat),
            layers: layers.into_iter().map(|(offsets, links)| Links { offsets: Slab::Owned(offsets), links: Slab::Owned(links) }).collect(),
            entry: entry.0,
            ef_search: ef_search.max(1),
            scan_up_to: EXACT_SCAN_UP_TO,
        })
    }

    /// The same graph searched with beam width `ef` (at least 1): wider finds the true nearest
    /// neighbours more often, and costs more distance computations per search.
    ///
    /// ```
    /// use semroute::index::{HnswIndex, NeighbourIndex};
    ///
    /// let index = HnswIndex::build(&[vec![1.0, 0.0], vec![0.0, 1.0]])?.with_ef_search(128);
    /// assert_eq!(index.search(&[0.0, 1.0], 1)[0].position, 1);
    /// # Ok::<(), semroute::Error>(())
    /// ```
    pub fn with_ef_search(mut self, ef: usize) -> Self {
        self.ef_search = ef.max(1);
        self
    }

    /// The same index, scanning every vector only when it holds at most `n` (0: always the
    /// graph; the default is [`EXACT_SCAN_UP_TO`]).
    ///
    /// ```
    /// use semroute::index::{HnswIndex, NeighbourIndex};
    /// let index = HnswIndex::build(&[vec![1.0, 0.0], vec![0.0, 1.0]])?.with_scan_up_to(0);
    /// assert_eq!(index.search(&[1.0, 0.0], 1)[0].position, 0);
    /// # Ok::<(), semroute::Error>(())
    /// ```
    pub fn with_scan_up_to(mut self, n: usize) -> Self {
        self.scan_up_to = n;
        self
    }

    fn vector(&self, i: u32) -> &[f32] {
        let start = i as usize * self.dim;
        &self.vectors[start..start + self.dim]
    }

    fn distance(&self, query: &[f32], i: u32) -> f32 {
        1.0 - dot(query, self.vector(i))
    }

    /// The `ef` nearest nodes the beam search finds (`ef` at least 1; the graph above the exact
    /// scan's size), nearest first (ties by position): what [`search`](NeighbourIndex::search)
    /// takes its first `k` from.
    fn beam(&self, query: &[f32], ef: usize) -> Vec<Scored> {
        let n = self.len();
        // Greedy descent through the upper layers.
        let mut current = Scored(self.distance(query, self.entry), self.entry);
        for layer in self.layers[1..].iter().rev() {
            loop {
                let mut improved = false;
                for &nb in layer.of(current.1) {
                    let d = self.distance(query, nb);
                    if d < current.0 {
                        current = Scored(d, nb);
                        improved = true;
                    }
                }
                if !improved {
                    break;
                }
            }
        }
        // Beam search on layer 0.
        let mut visited = vec![0u64; n.div_ceil(64)];
        let mut seen = |i: u32| {
            let (w, b) = (i as usize / 64, 1u64 << (i % 64));
            let was = visited[w] & b != 0;
            visited[w] |= b;
            was
        };
        seen(current.1);
        let mut candidates = BinaryHeap::from([Reverse(current)]);
        let mut best = BinaryHeap::from([current]);
        while let Some(Reverse(c)) = candidates.pop() {
            if best.len() >= ef && best.peek().is_some_and(|w| c.0 > w.0) {
                break;
            }
            for &nb in self.layers[0].of(c.1) {
                if seen(nb) {
                    continue;
                }
                let d = self.distance(query, nb);
                if best.len() < ef || best.peek().is_some_and(|w| d < w.0) {
                    candidates.push(Reverse(Scored(d, nb)));
                    best.push(Scored(d, nb));
                    if best.len() > ef {
                        best.pop();
                    }
                }
            }
        }
        best.into_sorted_vec()
    }
}

/// Flat numbers, either owned or used where they lie in the bytes of a saved graph read whole
/// (a warm start then reads the file once instead of decoding it number by number).
enum Slab<T> {
    Owned(Vec<T>),
    /// `bytes` of a file's contents, checked at load to be aligned for `T` and a whole number of them.
    InFile(Arc<FileBytes>, std::ops::Range<usize>),
}

impl<T: bytemuck::Pod> std::ops::Deref for Slab<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Slab::Owned(v) => v,
            Slab::InFile(file, bytes) => bytemuck::cast_slice(&file[bytes.clone()]),
        }
    }
}

impl<T: bytemuck::Pod> Slab<T> {
    /// `bytes` of `file` in place when they can be (little-endian machine, aligned), else a copy.
    fn of(file: &Arc<FileBytes>, bytes: std::ops::Range<usize>) -> Self {
        if cfg!(target_endian = "little") && bytemuck::try_cast_slice::<u8, T>(&file[bytes.clone()]).is_ok() {
            return Slab::InFile(file.clone(), bytes);
        }
        let size = std::mem::size_of::<T>();
        Slab::Owned(
            file[bytes]
                .chunks_exact(size)
                .map(|c| {
                    let mut v = T::zeroed();
                    let dst = bytemuck::bytes_of_mut(&mut v);
                    dst.copy_from_slice(c);
                    if cfg!(target_endian = "big") {
                        dst.reverse();
                    }
                    v
                })
                .collect(),
        )
    }
}

/// A file's contents, read whole into memory that is aligned for 8-byte numbers (a plain `Vec<u8>`
/// promises only 1), so that the 4-byte numbers of a saved graph are used where they lie.
struct FileBytes {
    words: Vec<u64>,
    len: usize,
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
}

impl FileBytes {
    /// Reads all of `file`, which must hold at most `limit` bytes, and exactly as many as it
    /// held when this began (a file that another process changes meanwhile is an error).
    fn read(mut file: std::fs::File, limit: u64) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        if len > limit {
            return Err(std::io::Error::other(format!("holds {len} bytes, more than a graph of this size can ({limit})")));
        }
        let len = len as usize;
        // One word more than needed, to notice a file that grew.
        let mut words = vec![0u64; len.div_ceil(8) + 1];
        let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled != len {
            return Err(std::io::Error::other(format!("changed size while it was read ({len} bytes, then {filled} or more)")));
        }
        Ok(FileBytes { words, len })
    }
}

/// Opens `path` with `options` only if it is a regular file (or a link to one), or absent (for
/// options that create it). Anything else in its place is refused without being opened for
/// reading: opening a FIFO blocks until another process writes to it, and a device can be
/// endless. On Unix the open is also non-blocking, so a FIFO swapped in after the check does not
/// block either (the flag changes nothing for a regular file), and the opened file is checked
/// again.
pub(crate) fn open_regular(path: &Path, mut options: std::fs::OpenOptions) -> std::io::Result<std::fs::File> {
    let not_regular = || {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file (a FIFO, socket, device or folder): refused, not opened")
    };
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => return Err(not_regular()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    Ok(file)
}

/// One layer's neighbour lists: node `i`'s are `links[offsets[i]..offsets[i + 1]]` (empty
/// for nodes below the layer).
struct Links {
    offsets: Slab<u32>,
    links: Slab<u32>,
}

impl Links {
    fn of(&self, node: u32) -> &[u32] {
        let i = node as usize;
        &self.links[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// A node and its distance, ordered by distance (ties by id) for the heaps.
#[derive(Clone, Copy, PartialEq)]
struct Scored(f32, u32);

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// The first `k` of a beam's nodes (nearest first) as hits, most similar first (ties by position).
fn hits_of(beam: &[Scored], k: usize) -> Vec<Hit> {
    let mut hits: Vec<Hit> = beam.iter().take(k).map(|s| Hit { position: s.1 as usize, similarity: 1.0 - s.0 }).collect();
    hits.sort_by(|a, b| b.similarity.total_cmp(&a.similarity).then(a.position.cmp(&b.position)));
    hits
}

/// Indexes of at most this many vectors are searched by an exact scan (see [`HnswIndex`]).
pub const EXACT_SCAN_UP_TO: usize = 2048;

impl NeighbourIndex for HnswIndex {
    fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        let n = self.len();
        if n == 0 || k == 0 || query.len() != self.dim {
            return Vec::new();
        }
        if n <= self.scan_up_to {
            return best((0..n as u32).map(|i| Hit { position: i as usize, similarity: dot(query, self.vector(i)) }).collect(), k);
        }
        hits_of(&self.beam(query, self.ef_search.max(k)), k)
    }

    fn len(&self) -> usize {
        self.layers[0].offsets.len() - 1
    }
}

/// Exact search by scanning every vector.
#[derive(Debug, Clone)]
pub struct ExactIndex {
    vectors: Vec<Vec<f32>>,
}

impl ExactIndex {
    /// Indexes `vectors` (position `i` is vector `i`).
    pub fn build(vectors: Vec<Vec<f32>>) -> Result<Self> {
        check_vectors(&vectors)?;
        Ok(ExactIndex { vectors })
    }
}

/// The `k` most similar of `hits`, most similar first (the lower position first on ties).
fn best(mut hits: Vec<Hit>, k: usize) -> Vec<Hit> {
    let k = k.min(hits.len());
    if k == 0 {
        return Vec::new();
    }
    let by = |a: &Hit, b: &Hit| b.similarity.total_cmp(&a.similarity).then(a.position.cmp(&b.position));
    hits.select_nth_unstable_by(k - 1, by);
    hits.truncate(k);
    hits.sort_by(by);
    hits
}

impl NeighbourIndex for ExactIndex {
    fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        best(self.vectors.iter().enumerate().map(|(position, v)| Hit { position, similarity: dot(query, v) }).collect(), k)
    }

    fn len(&self) -> usize {
        self.vectors.len()
    }
}

const GRAPH_MAGIC: &[u8; 8] = b"SRHNSW2\n";

/// Most layers a graph has: `hnsw_rs` builds at most 16 (its `NB_LAYER_MAX`).
const MAX_LAYERS: usize = 16;

/// The first `n` characters of `s` (not bytes: a file may hold any text where a hash should be).
fn first_chars(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(at, _)| &s[..at])
}

/// What a saved graph says it is (JSON, after the magic). A field we do not write is refused.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct GraphHeader {
    model_id: String,
    content_hash: String,
    dim: usize,
    count: usize,
    entry: u32,
    ef_search: usize,
    /// Number of links on each layer, bottom first.
    layer_links: Vec<usize>,
}

fn put_u32s(out: &mut Vec<u8>, xs: &[u32]) {
    for x in xs {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

/// Reads little-endian values off the bytes of a file, failing (not panicking) past their end,
/// and says where sections lie so that they can be used in place.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn skip(&mut self, n: usize) -> std::result::Result<std::ops::Range<usize>, String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or("the file ends early")?;
        let range = self.at..end;
        self.at = end;
        Ok(range)
    }
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], String> {
        let range = self.skip(n)?;
        Ok(&self.bytes[range])
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    /// The range of `n` 4-byte numbers.
    fn words(&mut self, n: usize) -> std::result::Result<std::ops::Range<usize>, String> {
        self.skip(n.checked_mul(4).ok_or("a count overflows")?)
    }
}

impl HnswIndex {
    /// Writes the graph and its vectors to `path` (atomically: a temp file, then a rename),
    /// labelled with the embedding model and the exemplars' content hash it was built for, and
    /// checksummed, so [`load`](HnswIndex::load) can refuse a file that does not match or is
    /// damaged.
    pub fn save(&self, path: &Path, model_id: &str, content_hash: &str) -> Result<()> {
        let header = GraphHeader {
            model_id: model_id.into(),
            content_hash: content_hash.into(),
            dim: self.dim,
            count: self.len(),
            entry: self.entry,
            ef_search: self.ef_search,
            layer_links: self.layers.iter().map(|l| l.links.len()).collect(),
        };
        let header = serde_json::to_vec(&header).expect("a header serialises");
        let numbers = self.vectors.len() + self.layers.iter().map(|l| l.offsets.len() + l.links.len()).sum::<usize>();
        let mut out = Vec::with_capacity(64 + header.len() + 4 * numbers);
        out.extend_from_slice(GRAPH_MAGIC);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        // Zeros up to a multiple of 8, so that the numbers after lie aligned once read (`FileBytes`).
        out.resize(out.len().next_multiple_of(8), 0);
        for x in self.vectors.iter() {
            out.extend_from_slice(&x.to_le_bytes());
        }
        for layer in &self.layers {
            put_u32s(&mut out, &layer.offsets);
            put_u32s(&mut out, &layer.links);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        write_atomically(path, &out)
    }

    /// Reads a graph saved by [`save`](HnswIndex::save). It must have been built by `model_id`
    /// over exemplars of `content_hash` with `count` vectors of `dim`; a file for another model,
    /// other exemplars or another dimension, a truncated or damaged file (checksum), a header
    /// field other than what `save` writes, a vector that is not finite and of unit length, or
    /// links that point outside the graph are an [`Error::Index`] that says which; something other
    /// than a regular file at `path` (a FIFO, a device) is an [`Error::Io`] and is never opened for
    /// reading. Never a graph that would answer wrongly, and never a panic.
    ///
    /// The file is read whole into memory (aligned, so its numbers are used where they lie, not
    /// decoded), not memory-mapped: another process truncating or rewriting the file in place
    /// afterwards cannot change the loaded graph or kill the process (a mapped file cut short
    /// raises SIGBUS on the next search). What the copy costs, measured on our 2-core machine
    /// with the other core busy (synthetic 384-d vectors, the first load in a fresh process, ten
    /// processes, the file in the page cache), checks of every vector's length included:
    /// - 10,000 vectors (17.0 MB): 12–25 ms, against 4–8 ms when it was mapped: 1–4% of a
    ///   warm start of the router at that size (0.25–0.59 s, mostly loading the embedding model);
    /// - 100,000 vectors (170 MB): 114–128 ms, against 18–38 ms mapped (about 100 ms more on a
    ///   0.33–0.55 s warm start). Backing the buffer with huge pages made later loads faster but
    ///   the first one slower (90–460 ms), so it is not done.
    pub fn load(path: &Path, model_id: &str, content_hash: &str, count: usize, dim: usize) -> Result<Self> {
        let bad = |m: String| Error::Index(format!("{}: {m}", path.display()));
        let mut read_only = std::fs::OpenOptions::new();
        read_only.read(true);
        let file = open_regular(path, read_only).map_err(|e| Error::io(path, e))?;
        // The most a graph of `count` vectors of `dim` can hold: its vectors, and on each of at
        // most 16 layers an offset per node and up to 2 x 256 links (what `build_with` allows),
        // plus a generous header. A larger file is refused before it is read.
        let per_node = dim.saturating_add(MAX_LAYERS * (1 + 2 * 256)).saturating_mul(4) as u64;
        let limit = (count as u64 + 1).saturating_mul(per_node).saturating_add(1 << 20);
        let bytes = Arc::new(FileBytes::read(file, limit).map_err(|e| bad(e.to_string()))?);
        if bytes.len() < GRAPH_MAGIC.len() + 12 || &bytes[..8] != GRAPH_MAGIC {
            return Err(bad("not a semroute graph file (or one of an older format)".into()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return Err(bad("checksum mismatch: the file is damaged or was cut short".into()));
        }
        let mut r = Reader { bytes: body, at: 8 };
        let parsed = (|| -> std::result::Result<Self, String> {
            let hlen = usize::try_from(r.u64()?).map_err(|_| "the header length overflows")?;
            let h: GraphHeader = serde_json::from_slice(r.take(hlen)?).map_err(|e| format!("bad header: {e}"))?;
            if h.model_id != model_id {
                return Err(format!("built with embedding model {:?}, not {model_id:?}", h.model_id));
            }
            if h.dim != dim {
                return Err(format!("holds {}-dimensional vectors, the model makes {dim}", h.dim));
            }
            if h.content_hash != content_hash || h.count != count {
                return Err(format!("built for other exemplars ({} vectors, content {:?})", h.count, first_chars(&h.content_hash, 12)));
            }
            if h.ef_search == 0 {
                return Err("its header says ef_search 0 (a saved graph has at least 1)".into());
            }
            if h.layer_links.is_empty() || h.layer_links.len() > MAX_LAYERS {
                return Err(format!("holds {} layers (a graph has 1 to {MAX_LAYERS})", h.layer_links.len()));
            }
            r.skip(r.at.next_multiple_of(8) - r.at)?;
            let vectors: Slab<f32> = Slab::of(&bytes, r.words(h.count.checked_mul(h.dim).ok_or("a count overflows")?)?);
            if let Some(problem) = vectors.chunks_exact(h.dim.max(1)).enumerate().find_map(|(i, v)| unit_problem(i, v)) {
                return Err(problem);
            }
            let valid = |id: u32| (id as usize) < h.count;
            if h.count > 0 && !valid(h.entry) {
                return Err("the entry point lies outside the graph".into());
            }
            let mut layers = Vec::with_capacity(h.layer_links.len());
            for (l, &count) in h.layer_links.iter().enumerate() {
                let offsets: Slab<u32> = Slab::of(&bytes, r.words(h.count.checked_add(1).ok_or("a count overflows")?)?);
                if offsets.first() != Some(&0)
                    || offsets.windows(2).any(|w| w[0] > w[1])
                    || offsets.last().map(|&x| x as usize) != Some(count)
                {
                    return Err(format!("the offsets of layer {l} are inconsistent"));
                }
                let links: Slab<u32> = Slab::of(&bytes, r.words(count)?);
                if !links.iter().all(|&id| valid(id)) {
                    return Err(format!("a link on layer {l} points outside the graph"));
                }
                layers.push(Links { offsets, links });
            }
            if r.at != body.len() {
                return Err("unexpected bytes after the graph".into());
            }
            Ok(HnswIndex { dim: h.dim, vectors, layers, entry: h.entry, ef_search: h.ef_search, scan_up_to: EXACT_SCAN_UP_TO })
        })();
        parsed.map_err(bad)
    }

    /// The vectors, in position order.
    pub fn vectors(&self) -> impl Iterator<Item = &[f32]> {
        self.vectors.chunks_exact(self.dim.max(1))
    }
}

/// The index a live router searches: an HNSW graph over the vectors it was built with, plus an
/// exact scan over vectors added since (positions continue after the graph's). Adding is cheap
/// and visible at once; [`needs_rebuild`](LiveIndex::needs_rebuild) says when the scanned part has
/// grown enough that a new graph over everything pays.
#[derive(Debug, Clone)]
pub struct LiveIndex {
    base: Arc<HnswIndex>,
    fresh: Arc<Vec<Vec<f32>>>,
    /// Beams found by [`search_remembered`](LiveIndex::search_remembered), shared with the
    /// other indexes over the same graph that hold it.
    remembered: Option<Arc<Beams>>,
}

/// At most this many queries' beams are remembered per shared graph (about 2.5 KB each with
/// 384-dimensional vectors): a router built with a [`FitCache`](crate::predict::FitCache) and
/// kept to serve does not grow without bound; past it, queries are searched as usual.
pub(crate) const REMEMBERED_QUERIES: usize = 16_384;

/// The graph's beam for each query searched through it (by the query's exact bits), for
/// routers that search the same prompts in the same graph: the candidates a benchmark compares
/// on one fold, which would otherwise each search every prompt again (see
/// [`FitCache`](crate::predict::FitCache)). Held only as long as those routers are.
#[derive(Default)]
pub(crate) struct Beams {
    by_query: std::sync::Mutex<BeamMap>,
}

/// Each query's beam, under the query's bits.
type BeamMap = std::collections::HashMap<Box<[u32]>, Arc<[Scored]>>;

impl std::fmt::Debug for Beams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.by_query.lock().map(|m| m.len()).unwrap_or_default();
        f.debug_struct("Beams").field("queries", &held).finish()
    }
}

impl LiveIndex {
    /// A live index over `base`, nothing added yet.
    pub fn new(base: HnswIndex) -> Self {
        LiveIndex { base: Arc::new(base), fresh: Arc::new(Vec::new()), remembered: None }
    }

    /// A live index over a graph other indexes share, remembering its beams in `beams` (shared
    /// with them too).
    pub(crate) fn sharing(base: Arc<HnswIndex>, beams: Arc<Beams>) -> Self {
        LiveIndex { base, fresh: Arc::new(Vec::new()), remembered: Some(beams) }
    }

    /// [`search`](NeighbourIndex::search), the same hits, but where this index shares its graph
    /// ([`sharing`](LiveIndex::sharing)) and nothing was added, each query's beam is searched
    /// once for every index that shares it: the `k` asked for (up to the graph's `ef_search`)
    /// takes the first `k` of the same beam either way.
    pub(crate) fn search_remembered(&self, query: &[f32], k: usize) -> Vec<Hit> {
        let base = &*self.base;
        let Some(beams) = self
            .remembered
            .as_ref()
            .filter(|_| self.fresh.is_empty() && k > 0 && k <= base.ef_search && query.len() == base.dim && base.len() > base.scan_up_to)
        else {
            return self.search(query, k);
        };
        let key: Box<[u32]> = query.iter().map(|x| x.to_bits()).collect();
        let known = beams.by_query.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key).cloned();
        let beam = known.unwrap_or_else(|| {
            let beam: Arc<[Scored]> = base.beam(query, base.ef_search).into();
            let mut by_query = beams.by_query.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if by_query.len() < REMEMBERED_QUERIES {
                by_query.insert(key, beam.clone());
            }
            beam
        });
        hits_of(&beam, k)
    }

    /// This index plus `vectors` (at positions `len()..`; each finite and of unit length, of the
    /// index's dimension); the graph is shared, not copied.
    pub fn with_added(&self, vectors: Vec<Vec<f32>>) -> Result<Self> {
        let dim = check_dimensions(&vectors)?;
        let held = if self.base.len() > 0 { Some(self.base.dim) } else { self.fresh.first().map(Vec::len) };
        if let Some(held) = held.filter(|&d| !vectors.is_empty() && d != dim) {
            return Err(Error::Index(format!("added vectors have dimension {dim}, the index holds {held}")));
        }
        check_vectors(&vectors)?;
        let mut fresh = Vec::with_capacity(self.fresh.len() + vectors.len());
        fresh.extend(self.fresh.iter().cloned());
        fresh.extend(vectors);
        Ok(LiveIndex { base: self.base.clone(), fresh: Arc::new(fresh), remembered: None })
    }

    /// Every vector, in position order (the graph's, then those added since).
    pub fn vectors(&self) -> impl Iterator<Item = &[f32]> {
        self.base.vectors().chain(self.fresh.iter().map(Vec::as_slice))
    }

    /// Vectors searched by scanning (added since the graph was built).
    pub fn scanned(&self) -> usize {
        self.fresh.len()
    }

    /// Whether the scanned part is over an eighth of the graph (and over 256 vectors): then a
    /// scan costs more than a graph search, and [`rebuilt`](LiveIndex::rebuilt) is worth its time.
    pub fn needs_rebuild(&self) -> bool {
        self.fresh.len() > 256.max(self.base.len() / 8)
    }

    /// A new graph over every vector (slow: run it off the routing path).
    pub fn rebuilt(&self) -> Result<Self> {
        let mut all: Vec<Vec<f32>> = (0..self.base.len() as u32).map(|i| self.base.vector(i).to_vec()).collect();
        all.extend(self.fresh.iter().cloned());
        Ok(LiveIndex::new(HnswIndex::build(&all)?))
    }
}

impl NeighbourIndex for LiveIndex {
    fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        let mut hits = self.base.search(query, k);
        if self.fresh.is_empty() {
            return hits;
        }
        let offset = self.base.len();
        hits.extend(self.fresh.iter().enumerate().map(|(i, v)| Hit { position: offset + i, similarity: dot(query, v) }));
        hits.sort_by(|a, b| b.similarity.total_cmp(&a.similarity).then(a.position.cmp(&b.position)));
        hits.truncate(k);
        hits
    }

    fn len(&self) -> usize {
        self.base.len() + self.fresh.len()
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that readers never see half
/// a file. The temporary name is unique to the process and the call: two routers of one process
/// saving the same file at once do not write into each other's.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Exemplar vectors cached on disk, one file per (embedding model, exemplar content) pair, so a
/// warm start does not re-embed.
///
/// The folder is bounded: after each write, the files least recently used (written or read) are
/// removed until the cache's own files (vectors, saved graphs, kept tunings; nothing else in the
/// folder is touched) fit the budget ([`DEFAULT_CACHE_BYTES`] unless set with
/// [`with_budget`](VectorCache::with_budget)) and number at most [`MAX_CACHE_FILES`]. The files of
/// the exemplars in hand are never removed, whatever their size: a router that reloads a growing
/// exemplar set every night keeps the newest set's files and drops the old ones. A file removed
/// that another process wanted is only embedded again there.
///
/// A file is checksummed (CRC-32), and on load every vector must be finite and of unit length
/// (within 1e-3; embedders return L2-normalised vectors). A file that fails any check (damaged,
/// truncated, of another dimension or count, of the previous format without a checksum), or
/// that is not a regular file, is refused with a warning (`tracing`) and never used: the
/// exemplars are embedded again and the file rewritten. A single flipped bit once made one
/// exemplar the nearest neighbour of every prompt, at similarity 7.7e35.
#[derive(Debug, Clone)]
pub struct VectorCache {
    dir: PathBuf,
    budget: u64,
}

/// Bytes a [`VectorCache`] folder holds at most by default (1 GiB: the vectors and graphs of about
/// 340,000 384-dimensional exemplars, at about 3.2 KB each).
pub const DEFAULT_CACHE_BYTES: u64 = 1 << 30;

/// Files a [`VectorCache`] folder holds at most (its vectors, graphs and kept tunings together).
pub const MAX_CACHE_FILES: usize = 1_000;

/// The folder of kept tunings inside a cache folder.
pub(crate) const TUNED_DIR: &str = "tuned";

/// The file format: this magic, the count and dimension (`u64` little-endian), the vectors
/// (`f32` little-endian), then the CRC-32 of everything before it. (`SRVEC01` had no checksum.)
const MAGIC: &[u8; 8] = b"SRVEC02\n";

impl VectorCache {
    /// A cache in `dir` (created on first write), bounded to [`DEFAULT_CACHE_BYTES`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        VectorCache { dir: dir.into(), budget: DEFAULT_CACHE_BYTES }
    }

    /// The same cache bounded to `bytes` instead (see the type's docs for what is removed first).
    ///
    /// ```
    /// use semroute::index::VectorCache;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let cache = VectorCache::new(dir.path()).with_budget(1);
    /// let v = vec![vec![1.0f32, 0.0]];
    /// cache.store("model", "first", &v)?;
    /// cache.store("model", "second", &v)?; // over the budget: the older file goes
    /// assert!(cache.load("model", "first", 1, 2).is_none());
    /// assert_eq!(cache.load("model", "second", 1, 2), Some(v)); // the newest always stays
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_budget(mut self, bytes: u64) -> Self {
        self.budget = bytes;
        self
    }

    fn path(&self, model_id: &str, content_hash: &str) -> PathBuf {
        let safe: String = model_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        self.dir.join(format!("{safe}-{}.vec", first_chars(content_hash, 32)))
    }

    /// Where the saved index graph for this key lives (see [`HnswIndex::save`]).
    pub fn graph_path(&self, model_id: &str, content_hash: &str) -> PathBuf {
        self.path(model_id, content_hash).with_extension("hnsw")
    }

    /// The cached vectors, if a sound file for this key holds exactly `count` vectors of `dim`.
    /// `None` when there is no such file, or when the file is refused (with a warning saying why).
    pub fn load(&self, model_id: &str, content_hash: &str, count: usize, dim: usize) -> Option<Vec<Vec<f32>>> {
        let path = self.path(model_id, content_hash);
        match read_vectors(&path, count, dim) {
            Ok(Some(vectors)) => {
                touch(&path);
                Some(vectors)
            }
            Ok(None) => None,
            Err(why) => {
                tracing::warn!("{}: cached exemplar vectors refused, embedding again: {why}", path.display());
                None
            }
        }
    }

    /// Writes the vectors atomically (temp file, then rename), so readers never see half a file.
    pub fn store(&self, model_id: &str, content_hash: &str, vectors: &[Vec<f32>]) -> Result<()> {
        let path = self.path(model_id, content_hash);
        let dim = vectors.first().map_or(0, Vec::len);
        let mut out = Vec::with_capacity(28 + vectors.len() * dim * 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(vectors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(dim as u64).to_le_bytes());
        for v in vectors {
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        write_atomically(&path, &out)?;
        self.trim(&[&path, &self.graph_path(model_id, content_hash)]);
        Ok(())
    }

    /// The saved index graph for this key, if the cache holds a sound one (see
    /// [`HnswIndex::load`]; `Ok(None)` when there is no file).
    pub(crate) fn load_graph(&self, model_id: &str, content_hash: &str, count: usize, dim: usize) -> Result<Option<HnswIndex>> {
        let path = self.graph_path(model_id, content_hash);
        if !path.exists() {
            return Ok(None);
        }
        let graph = HnswIndex::load(&path, model_id, content_hash, count, dim)?;
        // A warm start reads the graph alone; its vectors' file is as much in use.
        touch(&path);
        touch(&self.path(model_id, content_hash));
        Ok(Some(graph))
    }

    /// Saves `graph` for this key (see [`HnswIndex::save`]), then keeps the folder to its budget.
    pub(crate) fn save_graph(&self, graph: &HnswIndex, model_id: &str, content_hash: &str) -> Result<()> {
        let path = self.graph_path(model_id, content_hash);
        graph.save(&path, model_id, content_hash)?;
        self.trim(&[&path, &self.path(model_id, content_hash)]);
        Ok(())
    }

    /// Removes the cache's least recently used files until the rest fit the budget and
    /// [`MAX_CACHE_FILES`], never one of `keep`. Only the cache's own files count and go: vectors
    /// (`*.vec` beginning with the vector magic), graphs (`*.hnsw` with the graph magic) and kept
    /// tunings (`tuned/<64 hex digits>.json`). A file that cannot be removed is warned about.
    pub(crate) fn trim(&self, keep: &[&Path]) {
        let mut files = self.own_files();
        let mut total: u64 = files.iter().map(|f| f.2).sum();
        if total <= self.budget && files.len() <= MAX_CACHE_FILES {
            return;
        }
        // Oldest first; equal times by name, so the order does not depend on the listing's.
        files.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        let mut count = files.len();
        for (path, _, len) in files {
            if total <= self.budget && count <= MAX_CACHE_FILES {
                break;
            }
            if keep.iter().any(|k| *k == path) {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!("{}: not removed from the cache: {e}", path.display());
                    continue;
                }
            }
            total -= len;
            count -= 1;
        }
    }

    /// The cache's own files: (path, last used, bytes).
    fn own_files(&self) -> Vec<(PathBuf, std::time::SystemTime, u64)> {
        let mut out = Vec::new();
        let mut scan = |dir: &Path, own: &dyn Fn(&Path) -> bool| {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
                if meta.is_file() && own(&path) {
                    out.push((path, meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len()));
                }
            }
        };
        scan(&self.dir, &|p| match p.extension().and_then(|e| e.to_str()) {
            Some("vec") => starts_with(p, b"SRVEC0"),
            Some("hnsw") => starts_with(p, GRAPH_MAGIC),
            _ => false,
        });
        scan(&self.dir.join(TUNED_DIR), &|p| {
            p.extension().is_some_and(|e| e == "json")
                && p.file_stem().and_then(|s| s.to_str()).is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        });
        out
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Marks a cache file as just used (its modification time), so that trimming removes it last.
/// A file that cannot be marked is only removed sooner.
pub(crate) fn touch(path: &Path) {
    if let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

/// Whether the file at `path` begins with `magic`.
fn starts_with(path: &Path, magic: &[u8]) -> bool {
    let mut head = vec![0u8; magic.len()];
    let mut read_only = std::fs::OpenOptions::new();
    read_only.read(true);
    open_regular(path, read_only).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head == magic
}

/// The vectors of a cache file: `Ok(None)` when there is none, `Err` saying why a file is refused.
fn read_vectors(path: &Path, count: usize, dim: usize) -> std::result::Result<Option<Vec<Vec<f32>>>, String> {
    let mut read_only = std::fs::OpenOptions::new();
    read_only.read(true);
    let mut file = match open_regular(path, read_only) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let floats = count.checked_mul(dim).filter(|&n| n <= (usize::MAX - 28) / 4).ok_or("the count overflows")?;
    let expected = 24 + floats * 4 + 4;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len > expected as u64 {
        return Err(format!("it holds {len} bytes, more than a cache of {count} vectors of {dim} ({expected})"));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // (Bounded: a file that grows meanwhile is read no further than one byte past `expected`.)
    (&mut file).take(expected as u64 + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.starts_with(b"SRVEC01\n") {
        return Err("a file of the previous format, without a checksum".into());
    }
    if !bytes.starts_with(MAGIC) {
        return Err("not a semroute vector cache".into());
    }
    if bytes.len() != expected {
        return Err(format!("it holds {} bytes, a cache of {count} vectors of {dim} holds {expected}", bytes.len()));
    }
    let (body, crc) = bytes.split_at(expected - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err("checksum mismatch: the file is damaged".into());
    }
    let header = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    if (header(8), header(16)) != (count as u64, dim as u64) {
        return Err(format!("it holds {} vectors of {}, not {count} of {dim}", header(8), header(16)));
    }
    let floats: Vec<f32> = body[24..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let vectors: Vec<Vec<f32>> = floats.chunks_exact(dim.max(1)).map(<[f32]>::to_vec).collect();
    if let Some(problem) = vectors.iter().enumerate().find_map(|(i, v)| unit_problem(i, v)) {
        return Err(problem);
    }
    Ok(Some(vectors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_and_portable_dot_agree() {
        for len in [0, 1, 7, 8, 31, 32, 33, 384, 1000] {
            let a: Vec<f32> = (0..len).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
            let b: Vec<f32> = (0..len).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
            let (d, p) = (dot(&a, &b), dot_portable(&a, &b));
            assert!((d - p).abs() <= 1e-4 * (1.0 + p.abs()), "len {len}: {d} vs {p}");
        }
    }

    #[test]
    fn hnsw_finds_what_exact_search_finds_on_small_sets() {
        // Points on a circle: the neighbours of each are known exactly.
        let vectors: Vec<Vec<f32>> = (0..500)
            .map(|i| {
                let t = i as f32 * std::f32::consts::TAU / 500.0;
                vec![t.cos(), t.sin(), 0.0]
            })
            .collect();
        let hnsw = HnswIndex::build(&vectors).unwrap().with_scan_up_to(0);
        let exact = ExactIndex::build(vectors.clone()).unwrap();
        let scanned = HnswIndex::build(&vectors).unwrap();
        for q in vectors.iter().step_by(17) {
            let positions = |h: Vec<Hit>| {
                let mut p: Vec<usize> = h.iter().map(|h| h.position).collect();
                p.sort();
                p
            };
            assert_eq!(positions(scanned.search(q, 5)), positions(exact.search(q, 5)), "a small index is scanned exactly");
            let a: Vec<usize> = hnsw.search(q, 5).iter().map(|h| h.position).collect();
            let mut b: Vec<usize> = exact.search(q, 5).iter().map(|h| h.position).collect();
            let mut a_sorted = a.clone();
            a_sorted.sort();
            b.sort();
            assert_eq!(a_sorted, b);
        }
        assert!(hnsw.search(&vectors[0], 0).is_empty());
        assert_eq!(hnsw.search(&vectors[0], 1000).len(), 500);
        assert!(hnsw.search(&[1.0, 0.0], 3).is_empty(), "wrong dimension gives no hits");
    }

    #[test]
    fn bad_vectors_are_refused() {
        assert!(HnswIndex::build(&[vec![1.0, 0.0], vec![1.0]]).is_err());
        assert!(HnswIndex::build(&[vec![f32::NAN, 0.0]]).is_err());
        assert_eq!(HnswIndex::build(&[]).unwrap().search(&[1.0], 3), vec![]);
    }

    #[test]
    fn a_saved_graph_loads_back_and_a_wrong_or_damaged_one_is_refused() {
        let vectors = unit_vectors(600, 24, 7);
        let graph = HnswIndex::build(&vectors).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.hnsw");
        graph.save(&path, "model-a", "hash-1").unwrap();
        let back = HnswIndex::load(&path, "model-a", "hash-1", 600, 24).unwrap();
        for q in vectors.iter().step_by(37) {
            assert_eq!(back.search(q, 8), graph.search(q, 8));
        }
        assert!(back.vectors().zip(&vectors).all(|(a, b)| a == b.as_slice()));
        for (model, hash, n, dim, want) in [
            ("model-b", "hash-1", 600, 24, "embedding model"),
            ("model-a", "hash-2", 600, 24, "other exemplars"),
            ("model-a", "hash-1", 601, 24, "other exemplars"),
            ("model-a", "hash-1", 600, 32, "dimensional"),
        ] {
            let e = HnswIndex::load(&path, model, hash, n, dim).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("g.hnsw"), "{e}");
        }
        let bytes = std::fs::read(&path).unwrap();
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(HnswIndex::load(&path, "model-a", "hash-1", 600, 24).unwrap_err().to_string().contains("checksum"));
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        assert!(HnswIndex::load(&path, "model-a", "hash-1", 600, 24).is_err());
        std::fs::write(&path, b"SRVEC01\nnot a graph at all").unwrap();
        assert!(HnswIndex::load(&path, "model-a", "hash-1", 600, 24).unwrap_err().to_string().contains("not a semroute graph"));
    }

    #[test]
    fn indexes_sharing_a_graph_search_each_query_once_and_find_what_a_search_finds() {
        // A graph searched by its beam (not scanned), as the shared graphs of a benchmark's
        // folds are.
        let vectors = unit_vectors(600, 24, 11);
        let graph = Arc::new(HnswIndex::build(&vectors).unwrap().with_scan_up_to(0).with_ef_search(40));
        let beams = Arc::new(Beams::default());
        let (a, b) = (LiveIndex::sharing(graph.clone(), beams.clone()), LiveIndex::sharing(graph.clone(), beams.clone()));
        let queries = unit_vectors(30, 24, 12);
        for (i, q) in queries.iter().enumerate() {
            // Every k up to the graph's ef_search takes the first k of one beam; the answers are
            // the plain search's to the bit, whichever index searched the query first.
            for k in [1, 5, 8, 21, 40] {
                let (first, second) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
                let plain = graph.search(q, k);
                assert_eq!(first.search_remembered(q, k), plain, "query {i}, k {k}");
                assert_eq!(second.search_remembered(q, k), plain, "query {i}, k {k}");
            }
            // More than ef_search widens the beam: searched afresh, not remembered.
            assert_eq!(a.search_remembered(q, 41), graph.search(q, 41));
        }
        assert_eq!(beams.by_query.lock().unwrap().len(), queries.len());
        // An index that added vectors searches them too, so it does not use the shared beams.
        let grown = a.with_added(vec![queries[0].clone()]).unwrap();
        assert_eq!(grown.search_remembered(&queries[0], 1)[0].position, 600);
        assert_eq!(beams.by_query.lock().unwrap().len(), queries.len());
    }

    /// `n` unit vectors of `dim`, from a fixed seed.
    fn unit_vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = seed;
        let mut next = || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((rng >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        (0..n)
            .map(|_| {
                let v: Vec<f32> = (0..dim).map(|_| next()).collect();
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.into_iter().map(|x| x / n).collect()
            })
            .collect()
    }

    /// A saved graph file taken apart: its header (JSON) and the numbers after it.
    fn split_graph(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
        let hlen = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
        let header = serde_json::from_slice(&bytes[16..16 + hlen]).unwrap();
        let numbers = bytes[(16 + hlen).next_multiple_of(8)..bytes.len() - 4].to_vec();
        (header, numbers)
    }

    /// A graph file put back together from a header and numbers, with a valid checksum: what a
    /// hostile or buggy writer could leave, past the checksum.
    fn join_graph(header: &[u8], numbers: &[u8]) -> Vec<u8> {
        let mut out = GRAPH_MAGIC.to_vec();
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(header);
        out.resize(out.len().next_multiple_of(8), 0);
        out.extend_from_slice(numbers);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn a_crafted_graph_header_is_refused_never_panicked_on() {
        let vectors = unit_vectors(50, 8, 3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.hnsw");
        HnswIndex::build(&vectors).unwrap().save(&path, "model-a", "hash-1").unwrap();
        let (header, numbers) = split_graph(&std::fs::read(&path).unwrap());
        let with = |field: &str, value: serde_json::Value| {
            let mut h = header.clone();
            h[field] = value;
            serde_json::to_vec(&h).unwrap()
        };
        use serde_json::json;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            // A multibyte character across byte 12 of the hash (the message quoted 12 bytes).
            ("multibyte hash", with("content_hash", json!("ab€€€€€€€€"))),
            ("non-ASCII model", with("model_id", json!("modèle-ü"))),
            ("empty hash", with("content_hash", json!(""))),
            ("count too large", with("count", json!(u64::MAX))),
            ("count negative", with("count", json!(-1))),
            ("count as text", with("count", json!("50"))),
            ("dimension 0", with("dim", json!(0))),
            ("dimension huge", with("dim", json!(u64::MAX))),
            ("entry outside", with("entry", json!(50))),
            ("entry u32::MAX", with("entry", json!(u32::MAX))),
            ("entry too large for u32", with("entry", json!(u64::MAX))),
            ("ef_search 0", with("ef_search", json!(0))),
            ("no layer", with("layer_links", json!([]))),
            ("a huge layer", with("layer_links", json!([u64::MAX]))),
            ("17 layers", with("layer_links", json!(vec![0; 17]))),
            ("fewer links", with("layer_links", json!([1]))),
            ("unknown field", with("extra", json!(1))),
            ("header null", b"null".to_vec()),
            ("header not JSON", b"{\"model_id\":".to_vec()),
            ("header not UTF-8", vec![0xff, 0xfe, 0xfd]),
            ("empty header", Vec::new()),
        ];
        for (what, h) in cases {
            std::fs::write(&path, join_graph(&h, &numbers)).unwrap();
            let loaded = std::panic::catch_unwind(|| HnswIndex::load(&path, "model-a", "hash-1", 50, 8).map(|_| ()));
            match loaded {
                Ok(Err(e)) => assert!(e.to_string().contains("g.hnsw"), "{what}: {e}"),
                Ok(Ok(())) => panic!("{what}: a crafted header was accepted"),
                Err(_) => panic!("{what}: loading panicked"),
            }
        }
        // A header length past the end of the file, or absurdly large.
        for hlen in [numbers.len() as u64 * 2, u64::MAX] {
            let mut bytes = join_graph(&serde_json::to_vec(&header).unwrap(), &numbers);
            bytes[8..16].copy_from_slice(&hlen.to_le_bytes());
            let n = bytes.len() - 4;
            let crc = crc32fast::hash(&bytes[..n]);
            bytes[n..].copy_from_slice(&crc.to_le_bytes());
            std::fs::write(&path, &bytes).unwrap();
            assert!(HnswIndex::load(&path, "model-a", "hash-1", 50, 8).is_err(), "header length {hlen}");
        }
        // The untouched header still loads.
        std::fs::write(&path, join_graph(&serde_json::to_vec(&header).unwrap(), &numbers)).unwrap();
        HnswIndex::load(&path, "model-a", "hash-1", 50, 8).unwrap();
    }

    #[test]
    fn vectors_that_are_not_unit_length_are_refused_at_build_and_load() {
        assert!(HnswIndex::build(&[vec![1.0, 0.0], vec![3.0, 4.0]]).unwrap_err().to_string().contains("unit length"));
        // The zero vector (a static embedder's "no token I know") is allowed, similar to nothing.
        let index = HnswIndex::build(&[vec![0.0, 0.0], vec![0.6, 0.8], vec![1.0, 0.0]]).unwrap();
        let hits = index.search(&[1.0, 0.0], 3);
        assert_eq!((hits[0].position, hits.last().unwrap().position), (2, 0));
        assert_eq!(hits.last().unwrap().similarity, 0.0);
        assert!(HnswIndex::build(&[vec![0.0, 1e-9]]).is_err(), "almost zero is still a broken vector");
        assert!(ExactIndex::build(vec![vec![0.6, 0.8], vec![1e30, 0.0]]).is_err());
        let live = LiveIndex::new(HnswIndex::build(&[vec![1.0, 0.0]]).unwrap());
        assert!(live.with_added(vec![vec![2.0, 0.0]]).is_err());
        // Rounding is tolerated.
        HnswIndex::build(&[vec![1.0 + 1e-5, 0.0], vec![0.6, 0.8 - 1e-5]]).unwrap();

        // A graph file whose checksum is valid but whose vector was changed (one exponent bit,
        // the damage a cache once passed into a graph) is refused.
        let vectors = unit_vectors(50, 8, 5);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.hnsw");
        HnswIndex::build(&vectors).unwrap().save(&path, "model-a", "hash-1").unwrap();
        let (header, numbers) = split_graph(&std::fs::read(&path).unwrap());
        let header = serde_json::to_vec(&header).unwrap();
        for (byte, mask) in [(4 * 17 + 3, 0x40u8), (4 * 17 + 3, 0x7f), (4 * 17 + 2, 0x80)] {
            let mut damaged = numbers.clone();
            damaged[byte] ^= mask;
            std::fs::write(&path, join_graph(&header, &damaged)).unwrap();
            let e = HnswIndex::load(&path, "model-a", "hash-1", 50, 8).unwrap_err().to_string();
            assert!(e.contains("vector 2") && e.contains("g.hnsw"), "{e}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_where_a_saved_file_should_be_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let cache = VectorCache::new(dir.path());
        let graph = cache.graph_path("model-a", "hash-1");
        let vectors = graph.with_extension("vec");
        for p in [&graph, &vectors] {
            let made = std::process::Command::new("mkfifo").arg(p).status().unwrap();
            assert!(made.success());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (g, c) = (graph.clone(), cache.clone());
        std::thread::spawn(move || {
            let graph = HnswIndex::load(&g, "model-a", "hash-1", 50, 8).map(|_| ()).map_err(|e| e.to_string());
            let vectors = c.load("model-a", "hash-1", 50, 8).is_some();
            let _ = tx.send((graph, vectors));
        });
        let (graph_loaded, vectors_loaded) =
            rx.recv_timeout(std::time::Duration::from_secs(10)).expect("loading from a FIFO blocked instead of being refused");
        let e = graph_loaded.unwrap_err();
        assert!(e.contains("not a regular file") && e.contains(".hnsw"), "{e}");
        assert!(!vectors_loaded);
        // Saving replaces the FIFO with a regular file.
        let v = unit_vectors(50, 8, 9);
        HnswIndex::build(&v).unwrap().save(&graph, "model-a", "hash-1").unwrap();
        cache.store("model-a", "hash-1", &v).unwrap();
        HnswIndex::load(&graph, "model-a", "hash-1", 50, 8).unwrap();
        assert_eq!(cache.load("model-a", "hash-1", 50, 8).unwrap(), v);
    }

    #[test]
    fn a_loaded_graph_survives_its_file_being_truncated_or_overwritten_in_place() {
        let vectors = unit_vectors(2000, 16, 11);
        let graph = HnswIndex::build(&vectors).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.hnsw");
        graph.save(&path, "model-a", "hash-1").unwrap();
        let loaded = HnswIndex::load(&path, "model-a", "hash-1", 2000, 16).unwrap();
        let before: Vec<Vec<Hit>> = vectors.iter().step_by(97).map(|q| loaded.search(q, 8)).collect();
        // Another process writes zeros over the file in place, then truncates it.
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all(&vec![0u8; len]).unwrap();
        file.sync_all().unwrap();
        let after: Vec<Vec<Hit>> = vectors.iter().step_by(97).map(|q| loaded.search(q, 8)).collect();
        assert_eq!(before, after);
        file.set_len(0).unwrap();
        let after: Vec<Vec<Hit>> = vectors.iter().step_by(97).map(|q| loaded.search(q, 8)).collect();
        assert_eq!(before, after);
    }

    /// The names of the files in `dir` (not below it), sorted.
    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Sets a file's modification time to `secs` after the epoch.
    fn age(path: &Path, secs: u64) {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).unwrap();
    }

    #[test]
    fn the_vector_cache_keeps_to_its_budget_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let v = unit_vectors(30, 8, 5);
        let size = 24 + 30 * 8 * 4 + 4;
        // Room for two sets of vectors, not three.
        let cache = VectorCache::new(dir.path()).with_budget(2 * size as u64 + 10);
        cache.store("m", "one", &v).unwrap();
        cache.store("m", "two", &v).unwrap();
        let one = cache.path("m", "one");
        let two = cache.path("m", "two");
        age(&one, 1_000);
        age(&two, 2_000);
        // "one" is read, so it is the more recently used: "two" goes when "three" comes.
        assert!(cache.load("m", "one", 30, 8).is_some());
        // Files that are not the cache's own are never counted or removed, whatever their size.
        std::fs::write(dir.path().join("notes.txt"), vec![b'x'; 10 * size]).unwrap();
        std::fs::write(dir.path().join("mine.vec"), vec![b'y'; 10 * size]).unwrap();
        std::fs::create_dir_all(dir.path().join(TUNED_DIR)).unwrap();
        std::fs::write(dir.path().join(TUNED_DIR).join("not-a-key.json"), vec![b'z'; 10 * size]).unwrap();
        cache.store("m", "three", &v).unwrap();
        let three = cache.path("m", "three");
        assert!(one.exists() && three.exists() && !two.exists(), "{:?}", names_in(dir.path()));
        assert!(dir.path().join("notes.txt").exists() && dir.path().join("mine.vec").exists());
        assert!(dir.path().join(TUNED_DIR).join("not-a-key.json").exists());
        assert!(cache.load("m", "two", 30, 8).is_none());
        // A saved graph counts too, and the key in hand keeps both its files whatever the budget.
        let tight = VectorCache::new(dir.path()).with_budget(1);
        tight.save_graph(&HnswIndex::build(&v).unwrap(), "m", "three").unwrap();
        assert_eq!(names_in(dir.path()), ["m-three.hnsw", "m-three.vec", "mine.vec", "notes.txt"]);
        // Loading the graph marks its vectors' file as used too (a warm start reads the graph alone).
        age(&three, 1);
        assert!(tight.load_graph("m", "three", 30, 8).unwrap().is_some());
        let used = std::fs::metadata(&three).unwrap().modified().unwrap();
        assert!(used > std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000));
        assert!(tight.load_graph("m", "one", 30, 8).unwrap().is_none());
    }

    #[test]
    fn the_vector_cache_holds_at_most_its_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let tuned = dir.path().join(TUNED_DIR);
        std::fs::create_dir_all(&tuned).unwrap();
        // Kept tunings, each older than the one after it.
        for i in 0..MAX_CACHE_FILES as u64 {
            let path = tuned.join(format!("{i:064x}.json"));
            std::fs::write(&path, b"{}").unwrap();
            age(&path, 1_000 + i);
        }
        let cache = VectorCache::new(dir.path());
        cache.store("m", "new", &unit_vectors(3, 8, 6)).unwrap();
        let left = names_in(&tuned);
        assert_eq!(left.len(), MAX_CACHE_FILES - 1, "one tuning makes room for the vectors");
        assert_eq!(left[0], format!("{:064x}.json", 1), "the oldest went");
        assert!(cache.load("m", "new", 3, 8).is_some());
    }

    #[test]
    fn a_vector_cache_with_a_flipped_bit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = VectorCache::new(dir.path());
        let vectors = unit_vectors(40, 8, 13);
        cache.store("model-a", "hash-1", &vectors).unwrap();
        assert_eq!(cache.load("model-a", "hash-1", 40, 8).unwrap(), vectors);
        let path = cache.graph_path("model-a", "hash-1").with_extension("vec");
        let good = std::fs::read(&path).unwrap();
        // One bit anywhere: the exponent of a component (huge or tiny values), a mantissa bit, the
        // count, the checksum itself.
        let float = |i: usize| good.len() - 4 - 4 * (40 * 8 - i);
        for (at, mask) in [(float(17) + 3, 0x40u8), (float(17) + 3, 0x01), (float(17), 0x01), (8, 0x01), (good.len() - 1, 0x80)] {
            let mut bytes = good.clone();
            bytes[at] ^= mask;
            std::fs::write(&path, &bytes).unwrap();
            assert!(cache.load("model-a", "hash-1", 40, 8).is_none(), "byte {at} ^ {mask:#x} was accepted");
        }
        // A file of the previous format (no checksum) is refused, to be re-embedded.
        let mut old = b"SRVEC01\n".to_vec();
        old.extend_from_slice(&40u64.to_le_bytes());
        old.extend_from_slice(&8u64.to_le_bytes());
        vectors.iter().flatten().for_each(|x| old.extend_from_slice(&x.to_le_bytes()));
        std::fs::write(&path, &old).unwrap();
        assert!(cache.load("model-a", "hash-1", 40, 8).is_none());
        // Vectors that are not unit length are refused even with a valid checksum.
        let mut long = vectors.clone();
        long[3][0] *= 2.0;
        cache.store("model-a", "hash-1", &long).unwrap();
        assert!(cache.load("model-a", "hash-1", 40, 8).is_none());
    }

    #[test]
    fn a_live_index_finds_added_vectors_and_rebuilds_the_same_answers() {
        let unit = |i: usize| {
            let mut v = vec![0.0f32; 8];
            v[i % 8] = 1.0;
            v[(i / 8) % 8] += 0.5;
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / n).collect::<Vec<f32>>()
        };
        let live = LiveIndex::new(HnswIndex::build(&(0..10).map(unit).collect::<Vec<_>>()).unwrap());
        let live = live.with_added((10..64).map(unit).collect()).unwrap();
        assert_eq!((live.len(), live.scanned()), (64, 54));
        let hit = live.search(&unit(42), 1)[0];
        assert_eq!(unit(hit.position), unit(42));
        let rebuilt = live.rebuilt().unwrap();
        assert_eq!(rebuilt.scanned(), 0);
        assert_eq!(unit(rebuilt.search(&unit(42), 1)[0].position), unit(42));
        assert!(live.with_added(vec![vec![1.0; 3]]).unwrap_err().to_string().contains("dimension 3"));
    }
}
