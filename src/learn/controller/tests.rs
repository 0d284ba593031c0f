//! Tests of controller training.
