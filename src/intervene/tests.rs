//! Unit tests of `intervene`.

use super::*;

fn row(positions: Positions) -> Vec<RowSteering> {
    vec![vec![Intervention::add(
        0,
        Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap(),
        positions,
    )]]
}

fn plan(positions: Positions, len: usize, extra: usize) -> Result<SteeringPlan> {
    SteeringPlan::new(&row(positions), &[len], extra, 2, 4, &Device::Cpu)
}

#[test]
fn indices_resolve_from_either_end() {
    assert_eq!(resolve_index(0, 3), Some(0));
    assert_eq!(resolve_index(-1, 3), Some(2));
    assert_eq!(resolve_index(-3, 3), Some(0));
    assert_eq!(resolve_index(-4, 3), None);
    assert_eq!(resolve_index(i64::MIN, 3), None);
    assert_eq!(resolve_index(5, 3), Some(5));
}

#[test]
fn positions_outside_the_row_are_refused() {
    let e = plan(Positions::Indices(vec![-8]), 3, 0).unwrap_err();
    assert!(matches!(e, Error::OutOfRange(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "row 0: steering position -8 is outside the row, which has 3 prompt tokens \
         (expected 0..2 or -3..-1, this call reads no generated token)"
    );
    let e = plan(Positions::Indices(vec![3]), 3, 0).unwrap_err();
    assert!(matches!(e, Error::OutOfRange(_)), "{e}");
    // Decode step k is position len + k: 3 and 4 are read when 2 generated tokens are.
    assert!(plan(Positions::Indices(vec![3, 4]), 3, 2).is_ok());
    let e = plan(Positions::Indices(vec![5]), 3, 2).unwrap_err();
    assert!(
        e.to_string()
            .contains("or 3..4 for the 2 generated token(s)"),
        "{e}"
    );
    assert!(plan(Positions::Indices(vec![-3, 0, 2]), 3, 0).is_ok());
    assert!(matches!(
        plan(Positions::Indices(vec![]), 3, 0),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn generated_needs_generated_tokens() {
    let e = plan(Positions::Generated, 3, 0).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(plan(Positions::Generated, 3, 1).is_ok());
    assert!(plan(Positions::Last, 3, 0).is_ok());
    assert!(plan(Positions::Prompt, 3, 0).is_ok());
}

#[test]
fn lens_must_match_rows() {
    let r = SteeringPlan::new(&row(Positions::All), &[3, 4], 0, 2, 4, &Device::Cpu);
    assert!(matches!(r, Err(Error::InvalidArgument(_))));
}
