"""Property-based: any --set override either yields a valid config or a ConfigError that says
what to fix; never another exception."""
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from forceprune.runs import ConfigError, VisionConfig, config_from_dict, load_config

CONFIG = Path(__file__).parent.parent / "configs" / "lenet5_mnist_etp.toml"
KEYS = [f for f in VisionConfig.__dataclass_fields__] + ["force_options.beta", "force_options.norm", "budget.reach",
                                                      "epochs.x", "nope", "force_options.bta"]
VALUES = st.one_of(
    st.integers(-5, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", '"etp"', '"sgd"', "[1, 64]", "[]", "{}", '"l3"', "nan", "inf", "-1", "0"]),
    st.text(max_size=12),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=3))
def test_any_override_gives_a_config_or_a_clear_error(overrides):
    items = [f"{k}={v}" for k, v in overrides]
    try:
        config = load_config(CONFIG, items)
    except ConfigError as exc:
        assert str(exc).strip(), "errors say what is wrong"
        return
    assert config_from_dict(config.to_dict()) == config, "a valid config round-trips through its saved form"
