/work/wt/target/examples/linreg-rust/target/release/deps/linreg-0871b84da4b3a761.d: src/main.rs src/data.rs

/work/wt/target/examples/linreg-rust/target/release/deps/linreg-0871b84da4b3a761: src/main.rs src/data.rs

src/main.rs:
src/data.rs:
