//! The read-only properties of the record classes, written as a list.
//!
//! Every record class of `stoker._core` wraps an engine value in `inner`, and
//! most of its properties return one field of it as it is. `record_class!`
//! writes the class's `#[pymethods]` block from a list of those fields (with
//! their doc comments, which become the properties' docstrings) followed by
//! the methods written out by hand.

/// `record_class! { Class { copy id: i64, str name, opt_str labels, } { other
/// methods } }`: `copy` returns a `Copy` field, `str` a `String` field as
/// `&str`, `opt_str` an `Option<String>` field as `Option<&str>`.
macro_rules! record_class {
    ($class:ident { $($fields:tt)* } { $($methods:tt)* }) => {
        record_class!(@getters $class [] [$($methods)*] $($fields)*);
    };
    (@getters $class:ident [$($done:tt)*] [$($methods:tt)*]) => {
        #[pymethods]
        impl $class {
            $($done)*
            $($methods)*
        }
    };
    (@getters $class:ident [$($done:tt)*] [$($methods:tt)*]
        $(#[$doc:meta])* copy $name:ident: $ty:ty, $($rest:tt)*) => {
        record_class!(@getters $class [$($done)*
            $(#[$doc])*
            #[getter]
            fn $name(&self) -> $ty {
                self.inner.$name
            }
        ] [$($methods)*] $($rest)*);
    };
    (@getters $class:ident [$($done:tt)*] [$($methods:tt)*]
        $(#[$doc:meta])* str $name:ident, $($rest:tt)*) => {
        record_class!(@getters $class [$($done)*
            $(#[$doc])*
            #[getter]
            fn $name(&self) -> &str {
                &self.inner.$name
            }
        ] [$($methods)*] $($rest)*);
    };
    (@getters $class:ident [$($done:tt)*] [$($methods:tt)*]
        $(#[$doc:meta])* opt_str $name:ident, $($rest:tt)*) => {
        record_class!(@getters $class [$($done)*
            $(#[$doc])*
            #[getter]
            fn $name(&self) -> Option<&str> {
                self.inner.$name.as_deref()
            }
        ] [$($methods)*] $($rest)*);
    };
}

pub(crate) use record_class;
