//! The fixed data and the metric: protected, so every experiment is scored the same way.
//! A run prints `val_mse: X` computed here on held-out points it never trains on.

pub const FEATURES: usize = 8;
pub const TRAIN_POINTS: usize = 2048;
pub const VAL_POINTS: usize = 512;
const NOISE: f64 = 0.1; // standard deviation of the label noise: the floor of val_mse is NOISE^2

/// A small deterministic generator (xorshift64*), so the data is identical on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.next_f64().max(1e-12), self.next_f64());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

pub struct Split {
    pub x: Vec<[f64; FEATURES]>,
    pub y: Vec<f64>,
}

fn split(rng: &mut Rng, weights: &[f64; FEATURES], points: usize) -> Split {
    let mut x = Vec::with_capacity(points);
    let mut y = Vec::with_capacity(points);
    for _ in 0..points {
        let mut row = [0.0; FEATURES];
        for value in row.iter_mut() {
            *value = rng.normal();
        }
        let target: f64 = row.iter().zip(weights).map(|(a, w)| a * w).sum::<f64>() + 0.5;
        x.push(row);
        y.push(target + NOISE * rng.normal());
    }
    Split { x, y }
}

/// The training and validation splits: the same every run, whatever the experiment's seed.
pub fn splits() -> (Split, Split) {
    let mut rng = Rng::new(20240601);
    let mut weights = [0.0; FEATURES];
    for w in weights.iter_mut() {
        *w = 2.0 * rng.normal();
    }
    let train = split(&mut rng, &weights, TRAIN_POINTS);
    let val = split(&mut rng, &weights, VAL_POINTS);
    (train, val)
}

/// Mean squared error of a linear model on the validation split.
pub fn val_mse(val: &Split, w: &[f64; FEATURES], b: f64) -> f64 {
    let total: f64 = val.x.iter().zip(&val.y).map(|(row, y)| {
        let guess: f64 = row.iter().zip(w).map(|(a, w)| a * w).sum::<f64>() + b;
        (guess - y) * (guess - y)
    }).sum();
    total / val.x.len() as f64
}
