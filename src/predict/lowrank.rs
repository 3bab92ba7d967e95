//! A low-rank logistic factorisation of prompt × model quality (the "matrix factorisation" router
//! of RouteLLM, EmbedLLM's model embeddings, or a two-parameter IRT model over prompts).
//!
//! Every model's chance of answering a prompt well is a logistic function of the prompt's
//! embedding `x` through a projection all models share:
//!
//! `p_m(x) = σ(a_m + b_m · (W x) + c · x)`
//!
//! where `W` (r × d) maps the prompt to r latent skills, `b_m` says how much model m has of each,
//! `a_m` is the model's overall strength and `c` a shared difficulty direction. Because `W` and `c`
//! are learnt from every model's results at once, a model measured on few exemplars borrows the
//! structure the others reveal: it only needs to place its r + 1 numbers.
//!
//! The fit minimises the mean binary cross-entropy over the measured (exemplar, model) pairs (the
//! targets may be fractional scores) plus `l2 · (‖W‖² + Σ‖b_m‖² + ‖c‖²)`, with full-batch Adam
//! from a fixed pseudo-random start, so two fits on the same data give the same model. Each
//! iteration makes one pass over the exemplars (projection, per-model gradients and the
//! projection's gradient per exemplar while its vector is in cache), in `f32`; the parameters and
//! Adam's moments are kept in `f64`; one thread. Measured (release build, 2-core AMD EPYC, idle):
//! 1,000 exemplars × 384 dimensions × 50 models at rank 8, 300 iterations, fit in about 0.3 s.
//! (Splitting the exemplars over two threads made it 0.2 s on an idle machine but twice as slow
//! as one thread while another process kept both cores busy, so the fit stays on one.)
//!
//! The penalty is weighed against the *mean* loss, so the right `l2` shrinks as the data grows:
//! the default 1e-3 was well calibrated on the tests' 600 exemplars × 5 models, but on synthetic
//! data of 1,000 exemplars × 50 models (80 % measured) it shrank the predictions towards the
//! middle, and 1e-4 was both sharper and calibrated. Choose it on held-out data.

use std::ops::{Add, AddAssign, Mul, Neg, Sub};

/// Largest rank [`LowRankSettings::check`] accepts.
const MAX_RANK: usize = 64;
/// Most iterations [`LowRankSettings::check`] accepts.
const MAX_ITERATIONS: usize = 10_000;
/// Seed of the initialisation.
const SEED: u64 = 0x5eed_1a7e_0f00_d5ed;
/// The intercepts start at the logit of each model's mean target, clamped to this distance from 0 and 1.
const MEAN_CLAMP: f64 = 0.005;
/// Adam's decay rates and denominator offset.
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

/// Settings of [`LowRankModel::fit`]; `Default` = rank 8, l2 1e-3, 300 iterations, learning rate 0.05.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LowRankSettings {
    /// Number of latent skills r: rows of the shared projection `W` and length of each model's
    /// vector `b_m` (1..=64).
    pub rank: usize,
    /// Weight of the penalty `‖W‖² + Σ‖b_m‖² + ‖c‖²` against the mean cross-entropy (≥ 0; the
    /// intercepts are not penalised). The more data, the smaller it should be: see the
    /// [module documentation](self).
    pub l2: f64,
    /// Full-batch Adam steps (1..=10,000); the cost grows linearly with them.
    pub iterations: usize,
    /// Adam's step size (> 0).
    pub learning_rate: f64,
}

impl Default for LowRankSettings {
    fn default() -> Self {
        LowRankSettings { rank: 8, l2: 1e-3, iterations: 300, learning_rate: 0.05 }
    }
}

impl LowRankSettings {
    /// The settings a router fits the low-rank model with: what [`Predictor::Auto`]
    /// cross-validates, what the `low-rank` and `ensemble` names in a config file or flag stand
    /// for, and the savings harness's candidates. The default with a lighter penalty (l2 1e-4).
    ///
    /// ```
    /// use semroute::predict::LowRankSettings;
    ///
    /// assert_eq!(LowRankSettings::for_router().l2, 1e-4);
    /// assert_eq!(LowRankSettings::for_router().rank, LowRankSettings::default().rank);
    /// ```
    ///
    /// [`Predictor::Auto`]: super::Predictor::Auto
    pub fn for_router() -> Self {
        LowRankSettings { l2: 1e-4, ..LowRankSettings::default() }
    }

    /// Checks the settings are usable: rank in 1..=64, `l2` finite and ≥ 0, iterations in
    /// 1..=10,000, learning rate finite and > 0. The error says which one is not.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_RANK).contains(&self.rank) {
            return Err(format!("rank must be between 1 and {MAX_RANK}, not {}", self.rank));
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return Err(format!("l2 must be finite and at least 0, not {}", self.l2));
        }
        if !(1..=MAX_ITERATIONS).contains(&self.iterations) {
            return Err(format!("iterations must be between 1 and {MAX_ITERATIONS}, not {}", self.iterations));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(format!("learning rate must be finite and above 0, not {}", self.learning_rate));
        }
        Ok(())
    }
}

/// A fitted low-rank logistic model: each model's chance of a good answer from a prompt's
/// embedding (see the [module documentation](self) for the formula).
///
/// ```
/// use semroute::predict::lowrank::{LowRankModel, LowRankSettings};
///
/// // Two kinds of prompt (two directions stand in for embeddings); the first model answers only
/// // the first kind well, the second model three in four of both, and the third (measured on
/// // six exemplars only) behaves like the first.
/// let mut vectors = Vec::new();
/// let mut targets = Vec::new();
/// for i in 0..40 {
///     let first = i % 2 == 0;
///     vectors.push(if first { vec![1.0, 0.0] } else { vec![0.0, 1.0] });
///     let third = if i < 6 { Some(if first { 1.0 } else { 0.0 }) } else { None };
///     targets.push(vec![Some(if first { 1.0 } else { 0.0 }), Some(0.75), third]);
/// }
/// let model = LowRankModel::fit(&vectors, &targets, LowRankSettings::default())?;
/// assert_eq!(model.models(), 3);
/// let p = model.predict(&[1.0, 0.0]);
/// assert!(p[0] > 0.8 && (p[1] - 0.75).abs() < 0.1 && p[2] > 0.6, "{p:?}");
/// let q = model.predict(&[0.0, 1.0]);
/// assert!(q[0] < 0.2 && (q[1] - 0.75).abs() < 0.1 && q[2] < 0.4, "{q:?}");
/// // A vector of the wrong length gets each model's mean target.
/// assert_eq!(model.predict(&[1.0]), vec![0.5, 0.75, 0.5]);
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone)]
pub struct LowRankModel {
    /// Length of the prompt vectors.
    dim: usize,
    /// r.
    rank: usize,
    /// (r + 1) × dim, row-major: the rows of `W`, then `c`.
    projection: Vec<f64>,
    /// r × models, row-major: column m is `b_m`.
    skills: Vec<f64>,
    /// `a_m`.
    intercepts: Vec<f64>,
    /// Each model's mean observed target: the prediction for an unusable vector.
    means: Vec<f64>,
}

impl LowRankModel {
    /// Fits the model. `vectors[i]` is exemplar i's embedding (expected L2-normalised, used as
    /// given); `targets[i][m]` its quality for model m in [0, 1] (`None` = not measured).
    ///
    /// Errors (with a message saying what is wrong) on: no exemplars, a different number of
    /// vectors and target rows, empty, ragged or non-finite vectors, ragged target rows, zero
    /// models, a target that is not finite or outside [0, 1], a model with no observed target,
    /// invalid settings (see [`LowRankSettings::check`]), or a fit that diverged.
    pub fn fit(vectors: &[Vec<f32>], targets: &[Vec<Option<f64>>], settings: LowRankSettings) -> Result<LowRankModel, String> {
        settings.check().map_err(|e| format!("invalid low-rank settings: {e}"))?;
        if vectors.is_empty() {
            return Err("no exemplars to fit the low-rank model on".to_string());
        }
        if targets.len() != vectors.len() {
            return Err(format!("{} exemplar vectors but {} rows of targets", vectors.len(), targets.len()));
        }
        let dim = vectors[0].len();
        if dim == 0 {
            return Err("exemplar vectors are empty".to_string());
        }
        for (i, v) in vectors.iter().enumerate() {
            if v.len() != dim {
                return Err(format!("exemplar vector {i} has {} values but vector 0 has {dim}", v.len()));
            }
            if let Some(k) = v.iter().position(|x| !x.is_finite()) {
                return Err(format!("exemplar vector {i} has a non-finite value ({}) at position {k}", v[k]));
            }
        }
        let models = targets[0].len();
        if models == 0 {
            return Err("no models: the rows of targets are empty".to_string());
        }
        let mut sums = vec![0.0; models];
        let mut counts = vec![0usize; models];
        for (i, row) in targets.iter().enumerate() {
            if row.len() != models {
                return Err(format!("row {i} of targets has {} models but row 0 has {models}", row.len()));
            }
            for (m, t) in row.iter().enumerate() {
                if let Some(t) = *t {
                    if !(t.is_finite() && (0.0..=1.0).contains(&t)) {
                        return Err(format!("target of exemplar {i} for model {m} is {t}, not in [0, 1]"));
                    }
                    sums[m] += t;
                    counts[m] += 1;
                }
            }
        }
        if let Some(m) = counts.iter().position(|&c| c == 0) {
            return Err(format!("model {m} has no observed target"));
        }
        let means: Vec<f64> = sums.iter().zip(&counts).map(|(s, &c)| s / c as f64).collect();
        let observed: usize = counts.iter().sum();

        let n = vectors.len();
        let rank = settings.rank;
        let mut x = Vec::with_capacity(n * dim);
        for v in vectors {
            x.extend_from_slice(v);
        }
        let weight = (1.0 / observed as f64) as f32;
        let mut y = vec![0f32; n * models];
        let mut w = vec![0f32; n * models];
        for (i, row) in targets.iter().enumerate() {
            for (m, t) in row.iter().enumerate() {
                if let Some(t) = *t {
                    y[i * models + m] = t as f32;
                    w[i * models + m] = weight;
                }
            }
        }
        let problem = Problem { n, dim, models, rank, x, y, w };
        let layout = Layout { dim, models, rank };
        let theta = train(&problem, &layout, init(&layout, &means), settings);
        if theta.iter().any(|v| !v.is_finite()) {
            return Err("the low-rank fit diverged (non-finite parameters); are the vectors normalised?".to_string());
        }
        let (projection, rest) = theta.split_at(layout.projection_len());
        let (skills, intercepts) = rest.split_at(rank * models);
        Ok(LowRankModel { dim, rank, projection: projection.to_vec(), skills: skills.to_vec(), intercepts: intercepts.to_vec(), means })
    }

    /// One probability of a good answer per model, in the order of the targets' columns. A vector
    /// of the wrong length or with a non-finite value gets each model's mean target (the
    /// intercept-only prediction) instead; this never panics.
    pub fn predict(&self, vector: &[f32]) -> Vec<f64> {
        if vector.len() != self.dim || vector.iter().any(|v| !v.is_finite()) {
            return self.means.clone();
        }
        let latent: Vec<f64> =
            self.projection.chunks_exact(self.dim).map(|row| row.iter().zip(vector).map(|(w, x)| w * f64::from(*x)).sum()).collect();
        let (h, shared) = latent.split_at(self.rank);
        let mut z: Vec<f64> = self.intercepts.iter().map(|a| a + shared[0]).collect();
        for (h, b) in h.iter().zip(self.skills.chunks_exact(self.models())) {
            for (z, b) in z.iter_mut().zip(b) {
                *z += h * b;
            }
        }
        z.iter()
            .zip(&self.means)
            .map(|(z, mean)| {
                let p = sigmoid(*z);
                if p.is_finite() {
                    p
                } else {
                    *mean
                }
            })
            .collect()
    }

    /// Number of models (columns of the targets the model was fitted on).
    pub fn models(&self) -> usize {
        self.intercepts.len()
    }
}

/// A numerically stable logistic function.
fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Where each parameter group sits in the flat parameter vector: the projection `W` (r × d,
/// row-major) with `c` as its last row, then the models' `b_m` as the columns of an r × M
/// row-major matrix, then the intercepts `a_m`.
#[derive(Debug, Clone, Copy)]
struct Layout {
    dim: usize,
    models: usize,
    rank: usize,
}

impl Layout {
    fn projection_len(&self) -> usize {
        (self.rank + 1) * self.dim
    }
    /// Parameters before this index are penalised (all but the intercepts).
    fn penalised_len(&self) -> usize {
        self.projection_len() + self.models * self.rank
    }
    fn len(&self) -> usize {
        self.penalised_len() + self.models
    }
}

/// The training data in the precision the gradient is computed in.
struct Problem<T> {
    n: usize,
    dim: usize,
    models: usize,
    rank: usize,
    /// n × dim, row-major.
    x: Vec<T>,
    /// n × models targets (0 where missing).
    y: Vec<T>,
    /// n × models weights: 1 / (number of observed pairs), 0 where missing.
    w: Vec<T>,
}

/// The arithmetic the gradient needs, so it runs in `f32` for speed and in `f64` for the
/// finite-difference test.
trait Real: Copy + Default + PartialEq + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Neg<Output = Self> + AddAssign {
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn recip(self) -> Self;
    /// [`dot`], as fast as this type allows, with its result to the bit.
    fn dot(a: &[Self], b: &[Self]) -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline(always)]
    fn exp(self) -> Self {
        fast_exp(self)
    }
    #[inline(always)]
    fn recip(self) -> Self {
        f32::recip(self)
    }
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports the feature `dot_avx2` is compiled for.
                return unsafe { dot_avx2(a, b) };
            }
        }
        dot(a, b)
    }
}

impl Real for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn recip(self) -> Self {
        f64::recip(self)
    }
    fn dot(a: &[f64], b: &[f64]) -> f64 {
        dot(a, b)
    }
}

/// `e^x` for `f32` in plain arithmetic (Cephes' `expf`: `x = n ln 2 + r`, a degree-6 polynomial
/// for `e^r`, `2^n` built from its bits), so a loop of them vectorises, unlike a call to the
/// library's `expf`. Relative error below 2e-7; the argument is clamped to [−87, 88], so the
/// result is always a finite, normal, positive number (NaN gives NaN).
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 · 2^23 rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    let exponent = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    e_r * f32::from_bits((exponent.wrapping_add(127) as u32) << 23)
}

/// Dot product with eight independent accumulators, so the compiler can vectorise it.
#[inline(always)]
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::default(); 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let mut tail = T::default();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += *x * *y;
    }
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// [`dot`] in `f32` with AVX2: lane `l` of one register sums what `acc[l]` sums there, a
/// multiply then an add (no fused multiply-add), and the lanes and the tail are added in the
/// same order, so the result is the same to the bit. (The compiler vectorises [`dot`] for AVX2
/// only in halves, with a shuffle per step.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let chunks = n / 8 * 8;
    let mut tail = 0.0f32;
    for (x, y) in a[chunks..n].iter().zip(&b[chunks..n]) {
        tail += x * y;
    }
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i < chunks {
        // SAFETY: i + 8 <= chunks <= n, within both slices.
        let (x, y) = unsafe { (_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i))) };
        acc = _mm256_add_ps(acc, _mm256_mul_ps(x, y));
        i += 8;
    }
    let mut l = [0.0f32; 8];
    // SAFETY: `l` holds exactly eight f32.
    unsafe { _mm256_storeu_ps(l.as_mut_ptr(), acc) };
    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7])) + tail
}

/// `out += alpha · x`.
#[inline(always)]
fn axpy<T: Real>(alpha: T, x: &[T], out: &mut [T]) {
    for (o, x) in out.iter_mut().zip(x) {
        *o += alpha * *x;
    }
}

/// Sum with eight independent accumulators, so the compiler can vectorise it.
#[inline(always)]
fn sum<T: Real>(a: &[T]) -> T {
    let mut acc = [T::default(); 8];
    let chunks = a.chunks_exact(8);
    let mut tail = T::default();
    for x in chunks.remainder() {
        tail += *x;
    }
    for x in chunks {
        for l in 0..8 {
            acc[l] += x[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Gradient of the mean cross-entropy over the observed pairs with respect to the flat
/// parameters `theta` (see [`Layout`]), written to `grad`; returns the mean cross-entropy itself
/// if `with_loss` (otherwise 0: the logarithms cost as much as the rest of the pass).
///
/// One pass over the exemplars: for each, its projection `W x` and `c · x`, then every model's
/// logit and weighted residual `w (p − y)` (weight 0 where not measured), which update the
/// models' gradients and the gradient of the exemplar's projection, which is finally spread over
/// the gradient of `W` and `c` while the exemplar's vector is still in cache. Every inner loop
/// runs over d or over the models, with the models' vectors stored skill-major so they vectorise.
#[inline(always)]
fn data_gradient<T: Real>(problem: &Problem<T>, theta: &[T], grad: &mut [T], with_loss: bool) -> f64 {
    let Problem { n, dim, models, rank, .. } = *problem;
    let k = rank + 1;
    let (projection, rest) = theta.split_at(k * dim);
    let (skills, intercepts) = rest.split_at(rank * models);
    grad.fill(T::default());
    let (g_projection, g_rest) = grad.split_at_mut(k * dim);
    let (g_skills, g_intercepts) = g_rest.split_at_mut(rank * models);
    let one = T::from_f64(1.0);
    let mut latent = [T::default(); MAX_RANK + 1];
    let mut g_latent = [T::default(); MAX_RANK + 1];
    let mut z = vec![T::default(); models];
    let mut residual = vec![T::default(); models];
    let mut loss = 0.0f64;
    for i in 0..n {
        let x = &problem.x[i * dim..(i + 1) * dim];
        for (h, row) in latent[..k].iter_mut().zip(projection.chunks_exact(dim)) {
            *h = T::dot(row, x);
        }
        let (h, shared) = latent[..k].split_at(rank);
        let shared = shared[0];
        let y = &problem.y[i * models..(i + 1) * models];
        let w = &problem.w[i * models..(i + 1) * models];
        for (z, a) in z.iter_mut().zip(intercepts) {
            *z = *a + shared;
        }
        for (h, b) in h.iter().zip(skills.chunks_exact(models)) {
            axpy(*h, b, &mut z);
        }
        for (((g, z), y), w) in residual.iter_mut().zip(&z).zip(y).zip(w) {
            *g = *w * ((one + (-*z).exp()).recip() - *y);
        }
        if with_loss {
            for ((z, y), w) in z.iter().zip(y).zip(w) {
                // softplus(z) − y z, computed stably.
                let z = z.to_f64();
                let softplus = z.max(0.0) + (-z.abs()).exp().ln_1p();
                loss += w.to_f64() * (softplus - y.to_f64() * z);
            }
        }
        axpy(one, &residual, g_intercepts);
        let g_h = &mut g_latent[..k];
        for (((g_h, h), b), g_b) in g_h.iter_mut().zip(h).zip(skills.chunks_exact(models)).zip(g_skills.chunks_exact_mut(models)) {
            axpy(*h, &residual, g_b);
            *g_h = T::dot(b, &residual);
        }
        g_h[rank] = sum(&residual);
        for (g, row) in g_h.iter().zip(g_projection.chunks_exact_mut(dim)) {
            if *g != T::default() {
                axpy(*g, x, row);
            }
        }
    }
    loss
}

/// [`data_gradient`] in `f32`, compiled a second time for AVX2 and taken when the CPU has it
/// (checked at run time): twice the lanes of the baseline's SSE2. Every loop keeps its order of
/// operations (independent accumulators, no fused multiply-add), so the gradient is the same to
/// the bit either way; only the speed differs.
fn data_gradient_f32(problem: &Problem<f32>, theta: &[f32], grad: &mut [f32], with_loss: bool) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports the feature `data_gradient_avx2` is compiled for.
            return unsafe { data_gradient_avx2(problem, theta, grad, with_loss) };
        }
    }
    data_gradient(problem, theta, grad, with_loss)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn data_gradient_avx2(problem: &Problem<f32>, theta: &[f32], grad: &mut [f32], with_loss: bool) -> f64 {
    data_gradient(problem, theta, grad, with_loss)
}

/// Adds the gradient of `l2 · ‖θ‖²` over the penalised parameters to `grad`; returns the penalty.
fn add_penalty(theta: &[f64], l2: f64, layout: &Layout, grad: &mut [f64]) -> f64 {
    let end = layout.penalised_len();
    let mut penalty = 0.0;
    for (g, t) in grad[..end].iter_mut().zip(&theta[..end]) {
        *g += 2.0 * l2 * t;
        penalty += l2 * t * t;
    }
    penalty
}

/// The initial parameters: small random `W` (entries of standard deviation 1/√d) and `b_m`
/// (0.1/√r), `c` = 0, and each intercept at the logit of the model's mean target. Adam's first
/// steps dwarf the random part, which only breaks the symmetry between the latent skills.
fn init(layout: &Layout, means: &[f64]) -> Vec<f64> {
    let mut rng = SplitMix64(SEED);
    let mut theta = vec![0.0; layout.len()];
    let (projection, rest) = theta.split_at_mut(layout.projection_len());
    let (skills, intercepts) = rest.split_at_mut(layout.rank * layout.models);
    let w_scale = 1.0 / (layout.dim as f64).sqrt();
    for v in &mut projection[..layout.rank * layout.dim] {
        *v = w_scale * rng.normal();
    }
    let b_scale = 0.1 / (layout.rank as f64).sqrt();
    for v in skills.iter_mut() {
        *v = b_scale * rng.normal();
    }
    for (a, mean) in intercepts.iter_mut().zip(means) {
        let p = mean.clamp(MEAN_CLAMP, 1.0 - MEAN_CLAMP);
        *a = (p / (1.0 - p)).ln();
    }
    theta
}

/// Full-batch Adam from `theta`: the gradient in `f32`, the parameters and moments in `f64`.
fn train(problem: &Problem<f32>, layout: &Layout, mut theta: Vec<f64>, settings: LowRankSettings) -> Vec<f64> {
    let len = theta.len();
    let mut theta32 = vec![0f32; len];
    let mut grad32 = vec![0f32; len];
    let mut grad = vec![0f64; len];
    let mut first = vec![0f64; len];
    let mut second = vec![0f64; len];
    let (mut decay1, mut decay2) = (1.0, 1.0);
    for _ in 0..settings.iterations {
        for (t32, t) in theta32.iter_mut().zip(&theta) {
            *t32 = *t as f32;
        }
        data_gradient_f32(problem, &theta32, &mut grad32, false);
        for (g, g32) in grad.iter_mut().zip(&grad32) {
            *g = f64::from(*g32);
        }
        add_penalty(&theta, settings.l2, layout, &mut grad);
        decay1 *= BETA1;
        decay2 *= BETA2;
        let step = settings.learning_rate / (1.0 - decay1);
        let correction2 = 1.0 / (1.0 - decay2);
        for (((t, g), m1), m2) in theta.iter_mut().zip(&grad).zip(&mut first).zip(&mut second) {
            *m1 = BETA1 * *m1 + (1.0 - BETA1) * g;
            *m2 = BETA2 * *m2 + (1.0 - BETA2) * g * g;
            *t -= step * *m1 / ((*m2 * correction2).sqrt() + ADAM_EPS);
        }
    }
    theta
}

/// The splitmix64 generator: a fixed, dependency-free source of the initial parameters.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_f32_dot_is_the_portable_one_to_the_bit() {
        let mut rng = SplitMix64(11);
        for len in [0, 1, 7, 8, 9, 31, 384, 385] {
            let a: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
            let b: Vec<f32> = (0..len).map(|_| rng.normal() as f32 * 1e3).collect();
            assert_eq!(<f32 as Real>::dot(&a, &b).to_bits(), dot(&a, &b).to_bits(), "length {len}");
        }
    }

    /// A random unit vector near `centre` (noise of the given size per coordinate before normalising).
    fn near(rng: &mut SplitMix64, centre: &[f64], noise: f64) -> Vec<f32> {
        let v: Vec<f64> = centre.iter().map(|c| c + noise * rng.normal()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter().map(|x| (x / norm) as f32).collect()
    }

    fn unit(rng: &mut SplitMix64, dim: usize) -> Vec<f64> {
        let v: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter().map(|x| x / norm).collect()
    }

    fn bernoulli(rng: &mut SplitMix64, p: f64) -> f64 {
        if rng.uniform() <= p {
            1.0
        } else {
            0.0
        }
    }

    /// Brier score and accuracy (at 0.5, against targets rounded at 0.5) of `predict` over the
    /// observed targets of model `m`.
    fn score(vectors: &[Vec<f32>], targets: &[Vec<Option<f64>>], m: usize, predict: impl Fn(&[f32]) -> f64) -> (f64, f64) {
        let (mut brier, mut right, mut count) = (0.0, 0.0, 0.0);
        for (v, t) in vectors.iter().zip(targets) {
            if let Some(t) = t[m] {
                let p = predict(v);
                brier += (p - t) * (p - t);
                right += f64::from(u8::from((p >= 0.5) == (t >= 0.5)));
                count += 1.0;
            }
        }
        (brier / count, right / count)
    }

    /// The full objective (mean cross-entropy + penalty) and its gradient, in `f64`.
    fn objective(problem: &Problem<f64>, layout: &Layout, theta: &[f64], l2: f64, grad: &mut [f64]) -> f64 {
        let loss = data_gradient(problem, theta, grad, true);
        loss + add_penalty(theta, l2, layout, grad)
    }

    fn tiny_problem() -> (Problem<f64>, Layout, Vec<f64>) {
        let (n, dim, models, rank) = (9, 7, 4, 3);
        let mut rng = SplitMix64(7);
        let mut x = Vec::new();
        for _ in 0..n {
            x.extend(unit(&mut rng, dim));
        }
        let mut y = vec![0.0; n * models];
        let mut w = vec![0.0; n * models];
        let mut observed = 0;
        for i in 0..n * models {
            if i % 5 != 3 {
                // Some 0/1, some fractional targets; every fifth pair missing.
                y[i] = if i % 3 == 0 { bernoulli(&mut rng, 0.5) } else { rng.uniform() };
                w[i] = 1.0;
                observed += 1;
            }
        }
        for v in &mut w {
            *v /= observed as f64;
        }
        let layout = Layout { dim, models, rank };
        // Parameters of order 1, so the logits are far from 0 and every term matters.
        let theta: Vec<f64> = (0..layout.len()).map(|_| 0.8 * rng.normal()).collect();
        (Problem { n, dim, models, rank, x, y, w }, layout, theta)
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (problem, layout, theta) = tiny_problem();
        let l2 = 0.03;
        let mut grad = vec![0.0; layout.len()];
        let loss = objective(&problem, &layout, &theta, l2, &mut grad);
        assert!(loss.is_finite() && loss > 0.0);
        let mut scratch = vec![0.0; layout.len()];
        let h = 1e-5;
        let mut worst: f64 = 0.0;
        for j in 0..layout.len() {
            let mut plus = theta.clone();
            plus[j] += h;
            let mut minus = theta.clone();
            minus[j] -= h;
            let numeric = (objective(&problem, &layout, &plus, l2, &mut scratch) - objective(&problem, &layout, &minus, l2, &mut scratch))
                / (2.0 * h);
            let error = (numeric - grad[j]).abs() / (1e-3 + numeric.abs().max(grad[j].abs()));
            worst = worst.max(error);
            assert!(error < 1e-6, "parameter {j}: analytic {} numeric {numeric}", grad[j]);
        }
        eprintln!("worst relative gradient error {worst:.2e} over {} parameters", layout.len());

        // The f32 gradient the training uses agrees with the f64 one.
        let problem32 = Problem {
            n: problem.n,
            dim: problem.dim,
            models: problem.models,
            rank: problem.rank,
            x: problem.x.iter().map(|v| *v as f32).collect(),
            y: problem.y.iter().map(|v| *v as f32).collect(),
            w: problem.w.iter().map(|v| *v as f32).collect(),
        };
        let theta32: Vec<f32> = theta.iter().map(|v| *v as f32).collect();
        let mut grad32 = vec![0f32; layout.len()];
        let loss32 = data_gradient(&problem32, &theta32, &mut grad32, true);
        let loss64 = data_gradient(&problem, &theta, &mut grad, true);
        assert!((loss32 - loss64).abs() < 1e-5, "{loss32} vs {loss64}");
        let scale = grad.iter().fold(0.0f64, |s, g| s.max(g.abs()));
        for (g32, g) in grad32.iter().zip(&grad) {
            assert!((f64::from(*g32) - g).abs() < 1e-5 * scale, "{g32} vs {g}");
        }
    }

    /// Three clusters of unit vectors; per cluster, each model's chance of a good answer.
    struct Synthetic {
        train_vectors: Vec<Vec<f32>>,
        train_targets: Vec<Vec<Option<f64>>>,
        test_vectors: Vec<Vec<f32>>,
        test_targets: Vec<Vec<Option<f64>>>,
    }

    /// Models: A good on cluster 0 only, B good everywhere, C good on cluster 1 only, D scored
    /// with fractional grades (high on clusters 0 and 2), and E behaving like A but measured on
    /// only `e_fraction` of the training exemplars.
    fn synthetic(n_train: usize, n_test: usize, dim: usize, e_fraction: f64) -> Synthetic {
        let mut rng = SplitMix64(42);
        let centres: Vec<Vec<f64>> = (0..3).map(|_| unit(&mut rng, dim)).collect();
        let chance = [[0.9, 0.9, 0.1, 0.8, 0.9], [0.1, 0.9, 0.9, 0.3, 0.1], [0.1, 0.9, 0.1, 0.8, 0.1]];
        let mut draw = |count: usize, e_fraction: f64| {
            let mut vectors = Vec::new();
            let mut targets = Vec::new();
            for i in 0..count {
                let cluster = i % 3;
                vectors.push(near(&mut rng, &centres[cluster], 0.6 / (dim as f64).sqrt()));
                let p = chance[cluster];
                let fractional = (p[3] + 0.15 * rng.normal()).clamp(0.0, 1.0);
                let e = if rng.uniform() < e_fraction { Some(bernoulli(&mut rng, p[4])) } else { None };
                targets.push(vec![
                    Some(bernoulli(&mut rng, p[0])),
                    Some(bernoulli(&mut rng, p[1])),
                    Some(bernoulli(&mut rng, p[2])),
                    Some(fractional),
                    e,
                ]);
            }
            (vectors, targets)
        };
        let (train_vectors, train_targets) = draw(n_train, e_fraction);
        let (test_vectors, test_targets) = draw(n_test, 1.0);
        Synthetic { train_vectors, train_targets, test_vectors, test_targets }
    }

    #[test]
    fn learns_which_model_is_good_where() {
        let data = synthetic(600, 600, 32, 1.0);
        let model = LowRankModel::fit(&data.train_vectors, &data.train_targets, LowRankSettings::default()).unwrap();
        assert_eq!(model.models(), 5);
        for (m, name) in ["A", "B", "C", "D"].iter().enumerate() {
            let mean = model.means[m];
            let (brier, accuracy) = score(&data.test_vectors, &data.test_targets, m, |v| model.predict(v)[m]);
            let (base_brier, base_accuracy) = score(&data.test_vectors, &data.test_targets, m, |_| mean);
            eprintln!("model {name}: held-out Brier {brier:.4} (mean {base_brier:.4}), accuracy {accuracy:.3} (mean {base_accuracy:.3})");
            if m == 1 {
                // Good everywhere: nothing to learn beyond the mean, and nothing lost.
                assert!(brier < base_brier + 0.01, "{name}: {brier} vs {base_brier}");
            } else {
                assert!(brier < 0.6 * base_brier, "{name}: {brier} vs {base_brier}");
            }
        }
        for m in [0, 2] {
            let (_, accuracy) = score(&data.test_vectors, &data.test_targets, m, |v| model.predict(v)[m]);
            assert!(accuracy > 0.85, "model {m}: accuracy {accuracy}");
        }
        // Calibration: the mean prediction over each cluster is near the true chance.
        let chance = [[0.9, 0.9, 0.1, 0.8], [0.1, 0.9, 0.9, 0.3], [0.1, 0.9, 0.1, 0.8]];
        for (cluster, chance) in chance.iter().enumerate() {
            let mut sums = [0.0; 4];
            let mut count = 0.0;
            for v in data.test_vectors.iter().skip(cluster).step_by(3) {
                let p = model.predict(v);
                for m in 0..4 {
                    sums[m] += p[m];
                }
                count += 1.0;
            }
            for m in 0..4 {
                let mean = sums[m] / count;
                assert!((mean - chance[m]).abs() < 0.08, "cluster {cluster} model {m}: mean prediction {mean} vs chance {}", chance[m]);
            }
        }
    }

    #[test]
    fn a_rarely_measured_model_borrows_from_the_others() {
        let data = synthetic(600, 600, 32, 0.1);
        let observed = data.train_targets.iter().filter(|t| t[4].is_some()).count();
        assert!((40..=80).contains(&observed), "{observed}");
        let model = LowRankModel::fit(&data.train_vectors, &data.train_targets, LowRankSettings::default()).unwrap();
        let mean = model.means[4];
        let (brier, accuracy) = score(&data.test_vectors, &data.test_targets, 4, |v| model.predict(v)[4]);
        let (base_brier, _) = score(&data.test_vectors, &data.test_targets, 4, |_| mean);
        eprintln!("model E ({observed} of 600 measured): held-out Brier {brier:.4} (mean {base_brier:.4}), accuracy {accuracy:.3}");
        assert!(brier < 0.7 * base_brier, "{brier} vs {base_brier}");
        assert!(accuracy > 0.8, "{accuracy}");
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let s = LowRankSettings::default();
        let v = vec![vec![1.0f32, 0.0], vec![0.0, 1.0]];
        let t = vec![vec![Some(1.0), Some(0.0)], vec![Some(0.0), None]];
        assert!(LowRankModel::fit(&v, &t, s).is_ok());
        let expect_err = |v: &[Vec<f32>], t: &[Vec<Option<f64>>], s: LowRankSettings, word: &str| {
            let e = LowRankModel::fit(v, t, s).unwrap_err();
            assert!(e.contains(word), "{e:?} should mention {word:?}");
        };
        expect_err(&[], &[], s, "no exemplars");
        expect_err(&v, &t[..1], s, "rows of targets");
        expect_err(&[vec![1.0, 0.0], vec![1.0]], &t, s, "vector 1 has 1 values");
        expect_err(&[vec![], vec![]], &t, s, "empty");
        expect_err(&[vec![1.0, f32::NAN], vec![0.0, 1.0]], &t, s, "non-finite");
        expect_err(&[vec![1.0, 0.0], vec![f32::INFINITY, 1.0]], &t, s, "non-finite");
        expect_err(&v, &[vec![Some(1.0), Some(0.0)], vec![Some(0.0)]], s, "row 1 of targets");
        expect_err(&v, &[vec![Some(1.5), Some(0.0)], vec![Some(0.0), None]], s, "not in [0, 1]");
        expect_err(&v, &[vec![Some(-0.1), Some(0.0)], vec![Some(0.0), None]], s, "not in [0, 1]");
        expect_err(&v, &[vec![Some(f64::NAN), Some(0.0)], vec![Some(0.0), None]], s, "not in [0, 1]");
        expect_err(&v, &[vec![], vec![]], s, "no models");
        expect_err(&v, &[vec![Some(1.0), None], vec![Some(0.0), None]], s, "model 1 has no observed target");
        expect_err(&v, &t, LowRankSettings { rank: 0, ..s }, "rank");
        expect_err(&v, &t, LowRankSettings { learning_rate: f64::NAN, ..s }, "learning rate");

        let model = LowRankModel::fit(&v, &t, s).unwrap();
        assert_eq!(model.models(), 2);
        assert_eq!(model.predict(&[1.0, 0.0, 0.0]), vec![0.5, 0.0]);
        assert_eq!(model.predict(&[]), vec![0.5, 0.0]);
        assert_eq!(model.predict(&[f32::NAN, 0.0]), vec![0.5, 0.0]);
        assert_eq!(model.predict(&[f32::NEG_INFINITY, 0.0]), vec![0.5, 0.0]);
        // Extreme but finite values still give probabilities.
        for p in model.predict(&[f32::MAX, -f32::MAX]) {
            assert!((0.0..=1.0).contains(&p), "{p}");
        }
        let p = model.predict(&[1.0, 0.0]);
        assert!(p[0] > 0.5 && p[1] < 0.5, "{p:?}");

        // Absurd but valid settings and inputs end in a model or an error, never a panic.
        let wild = [vec![1e30f32, -1e30], vec![-1e30, 1e30]];
        for (vectors, rate) in [(&v, 1e30), (&v, 1e300), (&wild.to_vec(), 0.05), (&wild.to_vec(), 1e30)] {
            if let Ok(model) = LowRankModel::fit(vectors, &t, LowRankSettings { learning_rate: rate, iterations: 20, ..s }) {
                for p in model.predict(&vectors[0]).into_iter().chain(model.predict(&[f32::MAX, f32::MAX])) {
                    assert!((0.0..=1.0).contains(&p), "{p}");
                }
            }
        }
    }

    #[test]
    fn settings_are_checked() {
        let s = LowRankSettings::default();
        assert_eq!(s, LowRankSettings { rank: 8, l2: 1e-3, iterations: 300, learning_rate: 0.05 });
        assert!(s.check().is_ok());
        assert!(LowRankSettings { rank: 64, l2: 0.0, iterations: 10_000, ..s }.check().is_ok());
        assert!(LowRankSettings { rank: 0, ..s }.check().is_err());
        assert!(LowRankSettings { rank: 65, ..s }.check().is_err());
        assert!(LowRankSettings { l2: -1e-9, ..s }.check().is_err());
        assert!(LowRankSettings { l2: f64::INFINITY, ..s }.check().is_err());
        assert!(LowRankSettings { iterations: 0, ..s }.check().is_err());
        assert!(LowRankSettings { iterations: 10_001, ..s }.check().is_err());
        assert!(LowRankSettings { learning_rate: 0.0, ..s }.check().is_err());
        assert!(LowRankSettings { learning_rate: f64::INFINITY, ..s }.check().is_err());
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst: f64 = 0.0;
        for i in -87_000..88_000 {
            let x = i as f32 / 1000.0 + 0.000_37;
            let exact = f64::from(x).exp();
            let error = (f64::from(fast_exp(x)) - exact).abs() / exact;
            worst = worst.max(error);
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert!(fast_exp(-1e30) > 0.0 && fast_exp(-1e30) < 1e-37);
        assert!(fast_exp(1e30).is_finite() && fast_exp(1e30) > 1e38);
        assert_eq!(fast_exp(0.0), 1.0);
        assert!(fast_exp(f32::NAN).is_nan());
    }

    #[test]
    fn two_fits_are_identical() {
        let data = synthetic(150, 30, 16, 0.5);
        let settings = LowRankSettings { iterations: 50, ..LowRankSettings::default() };
        let one = LowRankModel::fit(&data.train_vectors, &data.train_targets, settings).unwrap();
        let two = LowRankModel::fit(&data.train_vectors, &data.train_targets, settings).unwrap();
        for v in &data.test_vectors {
            assert_eq!(one.predict(v), two.predict(v));
        }
    }

    /// The size the router meets: run with
    /// `cargo test --release -- --ignored --nocapture fit_time`.
    #[test]
    #[ignore]
    fn fit_time() {
        let (n, dim, models) = (1_000, 384, std::env::var("M").map(|v| v.parse().unwrap()).unwrap_or(50));
        let mut rng = SplitMix64(3);
        let centres: Vec<Vec<f64>> = (0..10).map(|_| unit(&mut rng, dim)).collect();
        let skill: Vec<Vec<f64>> = (0..models).map(|_| (0..10).map(|_| rng.uniform()).collect()).collect();
        let mut vectors = Vec::new();
        let mut targets = Vec::new();
        for i in 0..n {
            vectors.push(near(&mut rng, &centres[i % 10], 1.0 / (dim as f64).sqrt()));
            targets
                .push((0..models).map(|m| if rng.uniform() < 0.8 { Some(bernoulli(&mut rng, skill[m][i % 10])) } else { None }).collect());
        }
        let settings = LowRankSettings::default();
        for _ in 0..3 {
            let start = std::time::Instant::now();
            let model = LowRankModel::fit(&vectors, &targets, settings).unwrap();
            let elapsed = start.elapsed();
            eprintln!("fit n={n} d={dim} M={} r={} iterations={}: {elapsed:?}", model.models(), settings.rank, settings.iterations);
        }
    }
}
