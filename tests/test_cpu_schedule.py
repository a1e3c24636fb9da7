"""The CPU GEMM schedule's choice of input panel width (see PANEL_BUDGET_BYTES)."""

from pipeline.passes.default_cpu_schedule import MIN_PANELS_PER_CORE, PANEL_BUDGET_BYTES, _subpanels

SUBPANEL_128_CHANNELS = 128 * 32 * 4  # 32 positions of 128 fp32 channels


def test_a_panel_grows_to_the_budget():
    assert _subpanels(4096, SUBPANEL_128_CHANNELS, cores=2) == PANEL_BUDGET_BYTES // SUBPANEL_128_CHANNELS
    assert _subpanels(4096, PANEL_BUDGET_BYTES, cores=2) == 1


def test_a_panel_divides_the_positions():
    assert _subpanels(4096 + 8, SUBPANEL_128_CHANNELS, cores=2) == 8
    assert _subpanels(4095, SUBPANEL_128_CHANNELS, cores=2) == 1


def test_every_core_keeps_panels_to_run():
    assert [_subpanels(512, SUBPANEL_128_CHANNELS, cores) for cores in (2, 16, 64, 128)] == [32, 8, 2, 1]
    assert 512 // 8 >= MIN_PANELS_PER_CORE * 16
