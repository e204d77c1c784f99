//! Linear regression by stochastic gradient descent, for a wall-clock budget.
//! The editable part of the example target: the constants below and the training loop.

mod data;

use std::time::{Duration, Instant};

const LEARNING_RATE: f64 = 0.001; // step size of SGD
const BATCH: usize = 32; // points per gradient step
const MAX_EPOCHS: usize = 3; // passes over the training split (the budget may end it sooner)

fn main() {
    let budget: f64 = std::env::var("AUTORESEARCH_TIME_BUDGET").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let (train, val) = data::splits();
    let mut w = [0.0; data::FEATURES];
    let mut b = 0.0;
    let start = Instant::now();
    let deadline = Duration::from_secs_f64(budget);
    let mut steps = 0usize;
    'epochs: for _ in 0..MAX_EPOCHS {
        for batch in (0..train.x.len()).step_by(BATCH) {
            if start.elapsed() >= deadline {
                break 'epochs;
            }
            let end = (batch + BATCH).min(train.x.len());
            let mut grad_w = [0.0; data::FEATURES];
            let mut grad_b = 0.0;
            for i in batch..end {
                let row = &train.x[i];
                let guess: f64 = row.iter().zip(&w).map(|(a, w)| a * w).sum::<f64>() + b;
                let error = guess - train.y[i];
                for (g, a) in grad_w.iter_mut().zip(row) {
                    *g += error * a;
                }
                grad_b += error;
            }
            let scale = 2.0 * LEARNING_RATE / (end - batch) as f64;
            for (wi, g) in w.iter_mut().zip(&grad_w) {
                *wi -= scale * g;
            }
            b -= scale * grad_b;
            steps += 1;
        }
    }
    println!("---");
    println!("training_seconds: {:.3}", start.elapsed().as_secs_f64());
    println!("num_steps: {}", steps);
    println!("val_mse: {:.6}", data::val_mse(&val, &w, b));
}
