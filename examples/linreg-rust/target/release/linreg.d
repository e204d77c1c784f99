/work/wt/target/examples/linreg-rust/target/release/linreg: /work/wt/target/examples/linreg-rust/src/data.rs /work/wt/target/examples/linreg-rust/src/main.rs
