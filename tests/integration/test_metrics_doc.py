"""The README's metrics table against a real scrape, and counters that must not mislead."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_table_families() -> set[str]:
    """Every metric named in the first column of the table under "## Metrics" (``_total`` dropped:
    the scrape's family name for a counter)."""
    text = README.read_text()
    section = text[text.index("\n## Metrics\n"):]
    section = section[:section.index("\n## ", 1)]
    names = set()
    for line in section.splitlines():
        if line.startswith("| `resolver_"):
            first_cell = line.split("|")[1]
            names |= {re.sub(r"_total$", "", n) for n in re.findall(r"`(resolver_[a-z0-9_]+)", first_cell)}
    return names


def scraped_families(fwd) -> set[str]:
    _, text = fwd.http("/metrics")
    return {family.name for family in text_string_to_metric_families(text)}


def test_readme_metrics_table_matches_a_real_scrape(fake_upstream, start_forwarder, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("192.0.2.10 printer.lan\n")
    fwd = start_forwarder([fake_upstream.address], hosts_file={"enabled": True, "path": str(hosts)})
    scraped = scraped_families(fwd)
    documented = readme_table_families()
    assert len(scraped) > 40
    assert scraped - documented == set(), "exported but missing from README's metrics table"
    assert documented - scraped == set(), "in README's metrics table but not exported"


def test_readme_lists_every_stale_reason():
    from resolver.stats import STALE_REASONS

    text = README.read_text()
    section = text[text.index("\n## Metrics\n"):]
    row = next(line for line in section.splitlines() if line.startswith("| `resolver_stale_answers_total"))
    assert [r for r in STALE_REASONS if f"`{r}`" not in row] == []
    assert "not exported" not in section.split("\n## ", 2)[1]


def test_a_reload_that_shrinks_the_cache_counts_its_evictions(fake_upstream, start_forwarder):
    import dataclasses

    for i in range(10):
        fake_upstream.answer(f"n{i}.test", "A", "192.0.2.1", ttl=300)
    fwd = start_forwarder([fake_upstream.address])
    import dns.message
    import dns.query

    for i in range(10):
        dns.query.udp(dns.message.make_query(f"n{i}.test", "A"), "127.0.0.1", port=fwd.port, timeout=3)
    assert len(fwd.app.cache) == 10 and fwd.metric("resolver_cache_evictions_total") == 0
    smaller = dataclasses.replace(fwd.app.config, cache=dataclasses.replace(fwd.app.config.cache, max_entries=4))

    async def reload():
        fwd.app.reload(smaller)

    fwd.call(reload())
    assert len(fwd.app.cache) == 4
    assert fwd.metric("resolver_cache_evictions_total") == 6
    assert fwd.metric("resolver_cache_max_entries") == 4
