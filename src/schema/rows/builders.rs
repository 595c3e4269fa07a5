//! Column builders that can be rolled back.
//!
//! Arrow's own builders cannot drop what they were given, but a row must be all or nothing.
//! These builders keep plain `Vec`s (values, validity, offsets) so a failed row is undone by
//! truncating them to their lengths before the row; Arrow arrays are assembled only in
//! [`Builder::finish`], moving the vectors into Arrow buffers without copying.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Decimal256Array, Float64Array, Int32Array,
    Int64Array, ListArray, MapArray, StringArray, StructArray, Time32MillisecondArray, TimestampMillisecondArray,
};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{i256, FieldRef, Fields};

use crate::schema::types::{list_item_field, map_entries_field, struct_fields, KsqlType};

/// One column (or nested child column) under construction.
pub(super) struct Builder {
    /// One entry per slot: `false` for null.
    pub validity: Vec<bool>,
    pub values: Values,
}

/// The values of a builder, by ksqlDB type.
pub(super) enum Values {
    Boolean(Vec<bool>),
    Integer(Vec<i32>),
    Bigint(Vec<i64>),
    Double(Vec<f64>),
    Decimal128 { values: Vec<i128>, precision: u8, scale: u8 },
    Decimal256 { values: Vec<i256>, precision: u8, scale: u8 },
    String(Bytes),
    Bytes(Bytes),
    Timestamp(Vec<i64>),
    Date(Vec<i32>),
    Time(Vec<i32>),
    List { offsets: Vec<i32>, item: Box<Builder>, field: FieldRef },
    Map { offsets: Vec<i32>, keys: Box<Builder>, values: Box<Builder>, entries: FieldRef },
    Struct { fields: Vec<Builder>, names: Vec<String>, arrow_fields: Fields },
}

/// Variable-length values: `offsets` has one more entry than there are slots.
pub(super) struct Bytes {
    pub offsets: Vec<i32>,
    pub data: Vec<u8>,
}

impl Bytes {
    fn new() -> Self {
        Bytes { offsets: vec![0], data: Vec::new() }
    }

    /// Closes the current slot after its bytes were appended to `data`. Fails when the batch
    /// outgrows 32-bit offsets.
    pub fn close_slot(&mut self) -> Result<(), super::Fail> {
        let end =
            i32::try_from(self.data.len()).map_err(|_| super::Fail::new("more than 2 GiB of data in one batch"))?;
        self.offsets.push(end);
        Ok(())
    }
}

/// Pushes the current child length as the end of a list or map slot.
pub(super) fn close_offset(offsets: &mut Vec<i32>, child_len: usize) -> Result<(), super::Fail> {
    let end = i32::try_from(child_len).map_err(|_| super::Fail::new("more than 2^31 nested values in one batch"))?;
    offsets.push(end);
    Ok(())
}

fn offset_at(offsets: &[i32], index: usize) -> usize {
    offsets.get(index).map_or(0, |&offset| offset as usize)
}

impl Builder {
    pub fn new(ty: &KsqlType) -> Self {
        let values = match ty {
            KsqlType::Boolean => Values::Boolean(Vec::new()),
            KsqlType::Integer => Values::Integer(Vec::new()),
            KsqlType::Bigint => Values::Bigint(Vec::new()),
            KsqlType::Double => Values::Double(Vec::new()),
            KsqlType::Decimal { precision, scale } if *precision <= crate::schema::types::DECIMAL128_MAX_PRECISION => {
                Values::Decimal128 { values: Vec::new(), precision: *precision, scale: *scale }
            }
            KsqlType::Decimal { precision, scale } => {
                Values::Decimal256 { values: Vec::new(), precision: *precision, scale: *scale }
            }
            KsqlType::String => Values::String(Bytes::new()),
            KsqlType::Bytes => Values::Bytes(Bytes::new()),
            KsqlType::Timestamp => Values::Timestamp(Vec::new()),
            KsqlType::Date => Values::Date(Vec::new()),
            KsqlType::Time => Values::Time(Vec::new()),
            KsqlType::Array(item) => Values::List {
                offsets: vec![0],
                item: Box::new(Builder::new(item)),
                field: Arc::new(list_item_field(item)),
            },
            KsqlType::Map(key, value) => Values::Map {
                offsets: vec![0],
                keys: Box::new(Builder::new(key)),
                values: Box::new(Builder::new(value)),
                entries: Arc::new(map_entries_field(key, value)),
            },
            KsqlType::Struct(fields) => Values::Struct {
                fields: fields.iter().map(|field| Builder::new(&field.ty)).collect(),
                names: fields.iter().map(|field| field.name.clone()).collect(),
                arrow_fields: struct_fields(fields),
            },
        };
        Builder { validity: Vec::new(), values }
    }

    pub fn len(&self) -> usize {
        self.validity.len()
    }

    /// Appends a null slot (with a placeholder value, as Arrow's layout needs one).
    pub fn push_null(&mut self) {
        self.validity.push(false);
        match &mut self.values {
            Values::Boolean(values) => values.push(false),
            Values::Integer(values) | Values::Date(values) | Values::Time(values) => values.push(0),
            Values::Bigint(values) | Values::Timestamp(values) => values.push(0),
            Values::Double(values) => values.push(0.0),
            Values::Decimal128 { values, .. } => values.push(0),
            Values::Decimal256 { values, .. } => values.push(i256::ZERO),
            Values::String(bytes) | Values::Bytes(bytes) => {
                let end = bytes.offsets.last().copied().unwrap_or(0);
                bytes.offsets.push(end);
            }
            Values::List { offsets, .. } | Values::Map { offsets, .. } => {
                let end = offsets.last().copied().unwrap_or(0);
                offsets.push(end);
            }
            Values::Struct { fields, .. } => fields.iter_mut().for_each(Builder::push_null),
        }
    }

    /// Drops every slot from `len` on, children included.
    pub fn truncate(&mut self, len: usize) {
        self.validity.truncate(len);
        match &mut self.values {
            Values::Boolean(values) => values.truncate(len),
            Values::Integer(values) | Values::Date(values) | Values::Time(values) => values.truncate(len),
            Values::Bigint(values) | Values::Timestamp(values) => values.truncate(len),
            Values::Double(values) => values.truncate(len),
            Values::Decimal128 { values, .. } => values.truncate(len),
            Values::Decimal256 { values, .. } => values.truncate(len),
            Values::String(bytes) | Values::Bytes(bytes) => {
                bytes.offsets.truncate(len + 1);
                bytes.data.truncate(offset_at(&bytes.offsets, len));
            }
            Values::List { offsets, item, .. } => {
                offsets.truncate(len + 1);
                item.truncate(offset_at(offsets, len));
            }
            Values::Map { offsets, keys, values, .. } => {
                offsets.truncate(len + 1);
                let child_len = offset_at(offsets, len);
                keys.truncate(child_len);
                values.truncate(child_len);
            }
            Values::Struct { fields, .. } => fields.iter_mut().for_each(|f| f.truncate(len)),
        }
    }

    /// Bytes of appended data (values, validity, offsets), children included. Reserved but
    /// unused capacity is left out: after [`Builder::finish`] it is the room kept for the
    /// next batch, not data waiting to be flushed.
    pub fn data_bytes(&self) -> usize {
        fn size<T>(values: &[T]) -> usize {
            std::mem::size_of_val(values)
        }
        size(&self.validity)
            + match &self.values {
                Values::Boolean(values) => size(values),
                Values::Integer(values) | Values::Date(values) | Values::Time(values) => size(values),
                Values::Bigint(values) | Values::Timestamp(values) => size(values),
                Values::Double(values) => size(values),
                Values::Decimal128 { values, .. } => size(values),
                Values::Decimal256 { values, .. } => size(values),
                Values::String(bytes) | Values::Bytes(bytes) => size(&bytes.offsets) + size(&bytes.data),
                Values::List { offsets, item, .. } => size(offsets) + item.data_bytes(),
                Values::Map { offsets, keys, values, .. } => size(offsets) + keys.data_bytes() + values.data_bytes(),
                Values::Struct { fields, .. } => fields.iter().map(Builder::data_bytes).sum(),
            }
    }

    /// Moves the slots into an Arrow array of this builder's type and empties the builder.
    ///
    /// The builders keep Arrow's invariants (monotonic offsets within the child lengths,
    /// UTF-8 string data, equal child lengths), so the array constructors' checks hold.
    pub fn finish(&mut self) -> ArrayRef {
        let len = self.len();
        let validity = take_vec(&mut self.validity);
        let nulls = if validity.iter().all(|&valid| valid) { None } else { Some(NullBuffer::from(validity)) };
        match &mut self.values {
            Values::Boolean(values) => Arc::new(BooleanArray::new(BooleanBuffer::from(take_vec(values)), nulls)),
            Values::Integer(values) => Arc::new(Int32Array::new(take(values), nulls)),
            Values::Bigint(values) => Arc::new(Int64Array::new(take(values), nulls)),
            Values::Double(values) => Arc::new(Float64Array::new(take(values), nulls)),
            Values::Decimal128 { values, precision, scale } => Arc::new(
                Decimal128Array::new(take(values), nulls)
                    .with_data_type(arrow::datatypes::DataType::Decimal128(*precision, *scale as i8)),
            ),
            Values::Decimal256 { values, precision, scale } => Arc::new(
                Decimal256Array::new(take(values), nulls)
                    .with_data_type(arrow::datatypes::DataType::Decimal256(*precision, *scale as i8)),
            ),
            Values::String(bytes) => {
                let (offsets, data) = take_bytes(bytes);
                Arc::new(StringArray::new(offsets, data, nulls))
            }
            Values::Bytes(bytes) => {
                let (offsets, data) = take_bytes(bytes);
                Arc::new(BinaryArray::new(offsets, data, nulls))
            }
            Values::Timestamp(values) => {
                Arc::new(TimestampMillisecondArray::new(take(values), nulls).with_timezone("UTC"))
            }
            Values::Date(values) => Arc::new(Date32Array::new(take(values), nulls)),
            Values::Time(values) => Arc::new(Time32MillisecondArray::new(take(values), nulls)),
            Values::List { offsets, item, field } => {
                let offsets = take_offsets(offsets);
                Arc::new(ListArray::new(field.clone(), offsets, item.finish(), nulls))
            }
            Values::Map { offsets, keys, values, entries } => {
                let offsets = take_offsets(offsets);
                let entry_fields = match entries.data_type() {
                    arrow::datatypes::DataType::Struct(fields) => fields.clone(),
                    _ => Fields::empty(),
                };
                let entry_array = StructArray::new(entry_fields, vec![keys.finish(), values.finish()], None);
                Arc::new(MapArray::new(entries.clone(), offsets, entry_array, nulls, false))
            }
            Values::Struct { fields, arrow_fields, .. } => {
                if fields.is_empty() {
                    return Arc::new(StructArray::new_empty_fields(len, nulls));
                }
                let children = fields.iter_mut().map(Builder::finish).collect();
                Arc::new(StructArray::new(arrow_fields.clone(), children, nulls))
            }
        }
    }
}

/// Takes a vector's contents and leaves room for as many again: batches tend to be alike,
/// and growing from empty every batch costs about a sixth of the decoding time in
/// reallocations and page faults.
fn take_vec<T>(values: &mut Vec<T>) -> Vec<T> {
    let len = values.len();
    std::mem::replace(values, Vec::with_capacity(len))
}

fn take<T: arrow::datatypes::ArrowNativeType>(values: &mut Vec<T>) -> ScalarBuffer<T> {
    ScalarBuffer::from(take_vec(values))
}

fn take_offsets(offsets: &mut Vec<i32>) -> OffsetBuffer<i32> {
    let taken = take_vec(offsets);
    offsets.push(0);
    OffsetBuffer::new(ScalarBuffer::from(taken))
}

fn take_bytes(bytes: &mut Bytes) -> (OffsetBuffer<i32>, Buffer) {
    let offsets = take_offsets(&mut bytes.offsets);
    (offsets, Buffer::from_vec(take_vec(&mut bytes.data)))
}
