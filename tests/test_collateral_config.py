"""The ``[attestation]`` collateral settings: defaults, validation, and the cache they describe."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kettle.attestation.collateral import collateral_cache
from kettle.config import parse_config
from kettle.errors import ConfigError

HOME = Path("/srv/kettle-home")


def test_defaults_point_at_amd_and_intel_and_kettle_home() -> None:
    config = parse_config("", HOME)
    cache = collateral_cache(config)
    assert cache.directory == HOME / "attestation" / "collateral"
    assert (cache.amd_kds_url, cache.intel_pcs_url) == ("https://kdsintf.amd.com", "https://api.trustedservices.intel.com")
    assert cache.offline is False and cache.unsafe_allow_expired_collateral is False


def test_settings_are_read(caplog) -> None:
    text = (
        '[attestation]\ncollateral_dir = "/var/cache/kettle"\namd_kds_url = "https://kds.example/"\n'
        'intel_pcs_url = "http://pccs.internal:8081"\ncollateral_offline = true\nunsafe_allow_expired_collateral = true\n'
    )
    with caplog.at_level(logging.WARNING):
        config = parse_config(text, HOME)
        cache = collateral_cache(config)
    assert cache.directory == Path("/var/cache/kettle")
    assert (cache.amd_kds_url, cache.intel_pcs_url) == ("https://kds.example", "http://pccs.internal:8081")
    assert cache.offline is True and cache.unsafe_allow_expired_collateral is True
    messages = [r.message for r in caplog.records]
    assert any("intel_pcs_url is plain http" in m for m in messages)
    assert any(m.startswith("UNSAFE: attestation.unsafe_allow_expired_collateral") for m in messages)
    assert collateral_cache(config, offline=False).offline is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('amd_kds_url = "ftp://kds.example"', "attestation.amd_kds_url must be an http:// or https:// URL"),
        ('amd_kds_url = "kdsintf.amd.com"', "attestation.amd_kds_url must be an http:// or https:// URL"),
        ('intel_pcs_url = "https://"', "attestation.intel_pcs_url must be an http:// or https:// URL"),
        ('intel_pcs_url = "https://pcs.example/?x=1"', "attestation.intel_pcs_url must be an http:// or https:// URL without query"),
        ("intel_pcs_url = 5", "attestation.intel_pcs_url must be a str"),
        ('collateral_dir = ""', "attestation.collateral_dir must not be empty"),
        ('collateral_offline = "yes"', "attestation.collateral_offline must be true or false"),
        ("unsafe_allow_expired_collateral = 1", "attestation.unsafe_allow_expired_collateral must be true or false"),
    ],
)
def test_bad_settings_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(f"[attestation]\n{text}\n", HOME)
    assert refused.value.message.startswith(message)
