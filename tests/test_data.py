"""Tests for bt_laplace.data: PairCollator and preference_dataloader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict

from bt_laplace.data import PairCollator, preference_dataloader


class DictDataset(torch.utils.data.Dataset):
    """A map-style torch Dataset whose items are row dicts."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield {"x0": 1.0, "x1": 2.0, "label": 0}


def make_container(rows, container):
    if container == "list":
        return rows
    if container == "torch_dataset":
        return DictDataset(rows)
    return Dataset.from_list(rows)


def collect(loader):
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def random_pairs(n, item_shape, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, *item_shape, generator=gen, dtype=dtype)
    b = torch.randn(n, *item_shape, generator=gen, dtype=dtype)
    y = torch.randint(2, size=(n,), generator=gen)
    return a, b, y


def rows_from(a, b, y, kind):
    """Rows with item values given as torch tensors, numpy arrays or (nested) python lists."""
    convert = {"torch": lambda t: t, "numpy": lambda t: t.numpy(), "list": lambda t: t.tolist()}
    return [
        {"x0": convert[kind](a[i]), "x1": convert[kind](b[i]), "label": int(y[i])}
        for i in range(len(y))
    ]


CONTAINERS = ["list", "torch_dataset", "hf_dataset"]


def test_seed_example_hf_from_list_roundtrips_exactly():
    torch.manual_seed(0)
    rows = [
        {"x0": torch.randn(3), "x1": torch.randn(3), "label": torch.randint(2, size=(1,)).item()}
        for _ in range(10)
    ]
    dataset = Dataset.from_list(rows)
    loader = preference_dataloader(dataset, batch_size=4)
    x, y = collect(loader)
    assert x.dtype == torch.float32 and y.dtype == torch.long
    assert torch.equal(x[:, 0], torch.stack([r["x0"] for r in rows]))
    assert torch.equal(x[:, 1], torch.stack([r["x1"] for r in rows]))
    assert torch.equal(y, torch.tensor([r["label"] for r in rows]))
    assert len(loader.dataset) == 10 and loader.dataset.dataset is dataset


@pytest.mark.parametrize("kind", ["torch", "numpy", "list"])
@pytest.mark.parametrize("container", CONTAINERS)
def test_values_of_every_kind_in_every_container(container, kind):
    a, b, y = random_pairs(7, (3,), seed=1)
    data = make_container(rows_from(a, b, y, kind), container)
    loader = preference_dataloader(data, batch_size=3)
    x, labels = collect(loader)
    assert torch.equal(x, torch.stack([a, b], dim=1))
    assert torch.equal(labels, y)
    assert len(loader.dataset) == 7


@pytest.mark.parametrize("container", CONTAINERS)
def test_trl_chosen_rejected_puts_chosen_second_and_labels_ones(container):
    chosen, rejected, _ = random_pairs(5, (2,), seed=2)
    rows = [
        {"chosen": c.numpy(), "rejected": r.numpy(), "prompt": "hi"}
        for c, r in zip(chosen, rejected, strict=True)
    ]
    loader = preference_dataloader(
        make_container(rows, container), batch_size=2, chosen="chosen", rejected="rejected"
    )
    x, y = collect(loader)
    assert torch.equal(x[:, 0], rejected)
    assert torch.equal(x[:, 1], chosen)
    assert torch.equal(y, torch.ones(5, dtype=torch.long))


@pytest.mark.parametrize("container", CONTAINERS)
def test_two_dimensional_items(container):
    a, b, y = random_pairs(6, (4, 5), seed=3)
    x, labels = collect(
        preference_dataloader(make_container(rows_from(a, b, y, "numpy"), container), 4)
    )
    assert x.shape == (6, 2, 4, 5)
    assert torch.equal(x, torch.stack([a, b], dim=1))
    assert torch.equal(labels, y)


@pytest.mark.parametrize("container", CONTAINERS)
def test_scalar_items_have_empty_item_shape(container):
    rows = [{"x0": float(i), "x1": i + 0.5, "label": i % 2} for i in range(5)]
    x, y = collect(preference_dataloader(make_container(rows, container), batch_size=2))
    assert x.shape == (5, 2)
    assert torch.equal(x, torch.tensor([[i, i + 0.5] for i in range(5)]))
    assert torch.equal(y, torch.tensor([0, 1, 0, 1, 0]))


@pytest.mark.parametrize("container", CONTAINERS)
def test_float64_option_keeps_full_precision(container):
    a, b, y = random_pairs(5, (3,), seed=4, dtype=torch.float64)
    data = make_container(rows_from(a, b, y, "numpy"), container)
    x, _ = collect(preference_dataloader(data, batch_size=2, dtype=torch.float64))
    assert x.dtype == torch.float64
    assert torch.equal(x, torch.stack([a, b], dim=1))


def test_integer_items_are_converted_to_dtype():
    rows = [{"x0": torch.tensor([1, 2]), "x1": np.array([3, 4], dtype=np.int8), "label": 1}]
    x, _ = PairCollator()(rows)
    assert x.dtype == torch.float32 and torch.equal(x, torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]))


@pytest.mark.parametrize("container", CONTAINERS)
def test_no_shuffle_preserves_order_across_batches(container):
    rows = [{"x0": [float(i)], "x1": [-float(i)], "label": (i * 7) % 2} for i in range(10)]
    loader = preference_dataloader(make_container(rows, container), batch_size=3, shuffle=False)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [3, 3, 3, 1]
    x, y = collect(batches)
    assert torch.equal(x[:, 0, 0], torch.arange(10.0))
    assert torch.equal(x[:, 1, 0], -torch.arange(10.0))
    assert torch.equal(y, torch.tensor([(i * 7) % 2 for i in range(10)]))


@pytest.mark.parametrize("container", CONTAINERS)
def test_token_ids_stay_integers(container):
    """dtype=torch.long keeps token ids exact, for an embedding layer (a transformer)."""
    rows = [
        {"x0": [101, 7592, 102, 0], "x1": np.array([101, 2088, 999, 102]), "label": 0},
        {"x0": torch.tensor([101, 2, 102, 0]), "x1": [101.0, 3.0, 102.0, 0.0], "label": 1},
    ]
    if container == "hf_dataset":  # one arrow type per column: no float ids there
        rows[1]["x1"] = [101, 3, 102, 0]
    loader = preference_dataloader(make_container(rows, container), batch_size=2, dtype=torch.long)
    x, y = next(iter(loader))
    want = torch.tensor(
        [[[101, 7592, 102, 0], [101, 2088, 999, 102]], [[101, 2, 102, 0], [101, 3, 102, 0]]]
    )
    assert x.dtype == torch.long and torch.equal(x, want) and torch.equal(y, torch.tensor([0, 1]))


@pytest.mark.parametrize(
    "value, dtype, shown",
    [
        (2.5, torch.long, "2.5"),
        (float("nan"), torch.long, "nan"),
        (300, torch.uint8, "300"),
        (-1, torch.uint8, "-1"),
        (2.0**63, torch.long, "9.223372036854776e\\+18"),  # would wrap to -2**63
        (2**31, torch.int32, "2147483648"),
    ],
)
def test_token_ids_that_are_not_whole_numbers_in_range(value, dtype, shown):
    rows = [{"x0": [1, 2], "x1": [3, 4], "label": 1}, {"x0": [1, 2], "x1": [3, value], "label": 0}]
    with pytest.raises(ValueError, match=rf"Column 'x1' of row 1 .* value {shown}, .*{dtype}"):
        collect(preference_dataloader(rows, batch_size=2, dtype=dtype))


def test_uint64_token_ids_beyond_int64_are_refused():
    rows = [
        {
            "x0": np.array([1, 2], dtype=np.uint64),
            "x1": np.array([3, 2**63 + 5], dtype=np.uint64),
            "label": 1,
        }
    ]
    with pytest.raises(
        ValueError, match=r"Column 'x1' of row 0 .* not a whole number in the range"
    ):
        PairCollator(dtype=torch.long)(rows)


@pytest.mark.parametrize("container", CONTAINERS)
def test_shuffle_keeps_every_pair_intact(container):
    rows = [{"x0": float(i), "x1": -float(i), "label": i % 2} for i in range(11)]
    gen = torch.Generator().manual_seed(0)
    loader = preference_dataloader(make_container(rows, container), 4, True, generator=gen)
    x, y = collect(loader)
    order = x[:, 0].long()
    assert not torch.equal(order, torch.arange(11))
    assert torch.equal(order.sort().values, torch.arange(11))
    assert torch.equal(x[:, 1], -x[:, 0]) and torch.equal(y, order % 2)


def test_drop_last_and_len_dataset():
    rows = [{"x0": 1.0, "x1": 2.0, "label": 0}] * 5
    loader = preference_dataloader(rows, batch_size=2, drop_last=True)
    assert [len(y) for _, y in loader] == [2, 2]
    assert len(loader.dataset) == 5 and len(loader) == 2


def test_hf_dataset_with_worker_process_and_user_format():
    a, b, y = random_pairs(9, (3,), seed=5)
    dataset = Dataset.from_list(rows_from(a, b, y, "numpy")).with_format("torch")
    x, labels = collect(preference_dataloader(dataset, batch_size=4, num_workers=1))
    assert torch.equal(x, torch.stack([a, b], dim=1)) and torch.equal(labels, y)


@pytest.mark.parametrize(
    "label",
    [
        1,
        np.int64(1),
        np.int32(1),
        torch.tensor(1),
        torch.tensor([1]),
        np.array([1]),
        np.array(1),
        1.0,
    ],
    ids=[
        "int",
        "np_int64",
        "np_int32",
        "tensor_0d",
        "tensor_1elem",
        "array_1elem",
        "array_0d",
        "float",
    ],
)
def test_accepted_label_forms(label):
    rows = [{"x0": [1.0], "x1": [2.0], "label": 0}, {"x0": [1.0], "x1": [2.0], "label": label}]
    _, y = PairCollator()(rows)
    assert torch.equal(y, torch.tensor([0, 1]))


def test_collator_accepts_a_mapping_of_columns_and_hf_rows():
    a, b, y = random_pairs(4, (2,), seed=6)
    x, labels = PairCollator()({"x0": a.numpy(), "x1": list(b), "label": y.tolist()})
    assert torch.equal(x, torch.stack([a, b], dim=1)) and torch.equal(labels, y)
    dataset = Dataset.from_list(rows_from(a, b, y, "torch"))
    plain = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=PairCollator())
    x, labels = collect(plain)
    assert torch.equal(x, torch.stack([a, b], dim=1)) and torch.equal(labels, y)


def test_collator_repr_and_columns():
    collate = PairCollator(chosen="good", rejected="bad", dtype=torch.float64)
    assert collate.columns == ("bad", "good")
    assert repr(collate) == "PairCollator(rejected='bad', chosen='good', dtype=torch.float64)"
    assert PairCollator(first="a", second="b", label="c").columns == ("a", "b", "c")


# ----------------------------------------------------------------------------- bad inputs


def good_rows(n=5):
    return [{"x0": [0.0, 1.0], "x1": [2.0, 3.0], "label": i % 2} for i in range(n)]


def with_row(row_index, **changes):
    rows = good_rows()
    rows[row_index] = {**rows[row_index], **changes}
    return rows


def iterate(rows, container="list", **kwargs):
    return list(preference_dataloader(make_container(rows, container), batch_size=2, **kwargs))


@pytest.mark.parametrize("container", CONTAINERS)
def test_missing_column_names_column_row_and_available_columns(container):
    rows = good_rows()
    if container == "hf_dataset":
        for row in rows:
            del row["label"]
        match = r"Column 'label' is missing from `dataset`, which has columns \['x0', 'x1'\]"
    else:
        del rows[3]["label"]
        match = (
            r"Column 'label' is missing from row 3 of the dataset, which has columns \['x0', 'x1'\]"
        )
    with pytest.raises(ValueError, match=match):
        iterate(rows, container)


def test_missing_column_in_first_row_fails_when_building_the_loader():
    rows = good_rows()
    rows[0] = {"x0": [0.0, 1.0], "x1": [2.0, 3.0], "y": 1}
    with pytest.raises(
        ValueError, match=r"Column 'label' is missing from row 0 .*\['x0', 'x1', 'y'\]"
    ):
        preference_dataloader(rows)


@pytest.mark.parametrize("container", CONTAINERS)
def test_first_and_second_item_of_different_shapes(container):
    rows = [{**row, "x1": [2.0, 3.0, 4.0]} for row in good_rows()]
    with pytest.raises(
        ValueError, match=r"Column 'x1' of row 0 of the dataset has shape \(3,\).*'x0'.*\(2,\)"
    ):
        iterate(rows, container)


@pytest.mark.parametrize("container", CONTAINERS)
def test_items_of_different_shapes_across_rows(container):
    rows = with_row(3, x0=[0.0, 1.0, 2.0], x1=[0.0, 1.0, 2.0])
    with pytest.raises(
        ValueError, match=r"Column 'x0' of row 3 of the dataset has shape \(3,\).*\(2,\)"
    ):
        iterate(rows, container)


def test_items_of_different_shapes_in_a_plain_batch():
    rows = with_row(1, x1=[[1.0, 2.0]])
    with pytest.raises(
        ValueError, match=r"Column 'x1' of row 1 of the batch has shape \(1, 2\).*\(2,\)"
    ):
        PairCollator()(rows)


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"]
)
@pytest.mark.parametrize("column", ["x0", "x1"])
@pytest.mark.parametrize("container", CONTAINERS)
def test_non_finite_values(container, column, value):
    rows = with_row(3, **{column: [0.0, value]})
    with pytest.raises(
        ValueError, match=rf"Column '{column}' of row 3 of the dataset has non-finite"
    ):
        iterate(rows, container)


def test_missing_value_in_hf_dataset_is_reported_as_non_finite():
    rows = with_row(4, x0=[0.0, None])
    with pytest.raises(
        ValueError, match=r"Column 'x0' of row 4 of the dataset has non-finite values \(nan\)"
    ):
        iterate(rows, "hf_dataset")


def test_values_overflowing_the_dtype_are_non_finite():
    with pytest.raises(
        ValueError, match=r"Column 'x1' of row 0 of the batch .*\(inf\) as torch.float16"
    ):
        PairCollator(dtype=torch.float16)([{"x0": [1.0], "x1": [1e6], "label": 0}])


@pytest.mark.parametrize("label", [2, -1, 0.5, float("nan"), torch.tensor(3), np.int64(2)], ids=str)
@pytest.mark.parametrize("container", CONTAINERS)
def test_labels_outside_zero_one(container, label):
    rows = with_row(3, label=label)
    with pytest.raises(ValueError, match=r"Column 'label' of row 3 of the dataset is .*not 0 or 1"):
        iterate(rows, container)


@pytest.mark.parametrize("label", [True, False, np.bool_(True), torch.tensor(True)], ids=str)
@pytest.mark.parametrize("container", CONTAINERS)
def test_bool_labels_are_rejected(container, label):
    rows = (
        [{**row, "label": bool(label)} for row in good_rows()]
        if container == "hf_dataset"
        else with_row(3, label=label)
    )
    row = 0 if container == "hf_dataset" else 3
    with pytest.raises(TypeError, match=rf"Column 'label' of row {row} of the dataset is a bool"):
        iterate(rows, container)


def test_label_with_several_values_and_string_label():
    with pytest.raises(ValueError, match=r"Column 'label' of row 1 of the batch has shape \(2,\)"):
        PairCollator()(with_row(1, label=np.array([0, 1])))
    with pytest.raises(TypeError, match=r"Column 'label' of row 2 of the batch is str '1'"):
        PairCollator()(with_row(2, label="1"))


@pytest.mark.parametrize("container", CONTAINERS)
def test_string_values(container):
    rows = (
        [{**row, "x1": "a good answer"} for row in good_rows()]
        if container == "hf_dataset"
        else with_row(3, x1="text")
    )
    row = 0 if container == "hf_dataset" else 3
    with pytest.raises(
        TypeError, match=rf"Column 'x1' of row {row} of the dataset cannot be converted"
    ):
        iterate(rows, container)


def test_row_that_is_not_a_mapping():
    rows = good_rows()
    rows[3] = [[0.0, 1.0], [2.0, 3.0], 1]
    with pytest.raises(
        TypeError, match=r"Column 'x0' of row 3 of the dataset cannot be read: the row is a list"
    ):
        iterate(rows)


@pytest.mark.parametrize(
    "dataset",
    [[], (), DictDataset([]), Dataset.from_dict({"x0": [], "x1": [], "label": []})],
    ids=["list", "tuple", "torch_dataset", "hf_dataset"],
)
def test_empty_dataset(dataset):
    with pytest.raises(ValueError, match=r"`dataset` is empty"):
        preference_dataloader(dataset)


def test_empty_batch():
    with pytest.raises(ValueError, match=r"empty batch"):
        PairCollator()([])


@pytest.mark.parametrize(
    "dataset, match",
    [
        (torch.randn(4, 2, 3), r"got Tensor; pass datasets\.Dataset\.from_dict.*TensorDataset"),
        (np.zeros((4, 2)), r"got ndarray; pass datasets\.Dataset\.from_dict"),
        ({"x0": [1.0], "x1": [2.0], "label": [0]}, r"got dict; pass datasets\.Dataset\.from_dict"),
        (DatasetDict({"train": Dataset.from_dict({"x0": [1.0]})}), r"pick a split"),
        (Stream(), r"without a length"),
        (42, r"got int"),
    ],
    ids=["tensor", "ndarray", "dict_of_lists", "dataset_dict", "iterable_dataset", "int"],
)
def test_wrong_dataset_type(dataset, match):
    with pytest.raises(TypeError, match=match):
        preference_dataloader(dataset)


@pytest.mark.parametrize(
    "batch_size, error",
    [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError), ("4", TypeError)],
    ids=["zero", "negative", "float", "bool", "str"],
)
def test_bad_batch_size(batch_size, error):
    with pytest.raises(error, match=r"`batch_size`"):
        preference_dataloader(good_rows(), batch_size=batch_size)


@pytest.mark.parametrize(
    "kwargs",
    [{"chosen": "chosen"}, {"rejected": "rejected"}],
    ids=["chosen_only", "rejected_only"],
)
def test_chosen_and_rejected_come_together(kwargs):
    with pytest.raises(ValueError, match=r"`chosen` and `rejected`"):
        PairCollator(**kwargs)
    with pytest.raises(ValueError, match=r"`chosen` and `rejected`"):
        preference_dataloader(good_rows(), **kwargs)


def test_bad_collator_arguments():
    with pytest.raises(ValueError, match=r"not both"):
        PairCollator(chosen="c", rejected="r", label="y")
    with pytest.raises(ValueError, match=r"must differ"):
        PairCollator(first="a", second="a")
    for bad in (torch.bool, torch.complex64, "float32"):
        with pytest.raises(TypeError, match=r"`dtype` must be a floating .* or an integer one"):
            PairCollator(dtype=bad)
    with pytest.raises(TypeError, match=r"`label` must be a column name"):
        PairCollator(label=0)
    with pytest.raises(TypeError, match=r"list of row mappings"):
        PairCollator()("x0")
    with pytest.raises(ValueError, match=r"to collate a single row, pass \[row\]"):
        PairCollator()({"x0": [1.0, 2.0], "x1": [3.0, 4.0], "label": 1})


@pytest.mark.parametrize("container", CONTAINERS)
def test_trl_tokenized_ids_of_different_lengths_are_padded(container):
    """TRL's tokenized columns: ids of different lengths, padded to the batch's longest."""
    rows = [
        {"input_ids_chosen": [101, 7, 8, 102], "input_ids_rejected": [101, 9, 102]},
        {"input_ids_chosen": [101, 5, 102], "input_ids_rejected": [101, 4, 4, 4, 4, 102]},
    ]
    loader = preference_dataloader(
        make_container(rows, container), batch_size=2, chosen="input_ids_chosen",
        rejected="input_ids_rejected", dtype=torch.long, pad_value=0,
    )  # fmt: skip
    x, y = next(iter(loader))
    want = torch.tensor(
        [
            [[101, 9, 102, 0, 0, 0], [101, 7, 8, 102, 0, 0]],  # rejected first, chosen second
            [[101, 4, 4, 4, 4, 102], [101, 5, 102, 0, 0, 0]],
        ]
    )
    assert x.dtype == torch.long and torch.equal(x, want) and torch.equal(y, torch.ones(2).long())


def test_padding_needs_one_dimensional_items_and_a_fitting_pad_value():
    rows = [{"x0": [[1, 2]], "x1": [[3, 4]], "label": 0}]
    msg = r"Column 'x0' of row 0 of the dataset has shape \(1, 2\); `pad_value`"
    with pytest.raises(ValueError, match=msg):
        collect(preference_dataloader(rows, dtype=torch.long, pad_value=0))
    for bad in (0.5, True, float("nan"), "0"):
        with pytest.raises(TypeError, match=r"`pad_value` must be"):
            PairCollator(dtype=torch.long, pad_value=bad)
    assert repr(PairCollator(dtype=torch.long, pad_value=0)).endswith("pad_value=0)")


def test_without_pad_value_different_lengths_stay_an_error():
    rows = [{"x0": [1, 2, 3], "x1": [1, 2], "label": 0}]
    with pytest.raises(ValueError, match=r"same shape \(pad or truncate"):
        PairCollator(dtype=torch.long)(rows)
