"""The host's integer size helpers (launch.cdiv, launch.next_power_of_2) against Triton's constexpr functions they
replace on the launch path, over every size a grid or a padded block count can take here."""

import triton

from sla2_kernels import launch


def test_cdiv_and_next_power_of_2_equal_tritons():
    for a in range(0, 5000):
        assert launch.next_power_of_2(max(a, 1)) == triton.next_power_of_2(max(a, 1))
        for b in (1, 3, 16, 64, 128, 132, 4096):
            assert launch.cdiv(a, b) == triton.cdiv(a, b)
    assert launch.cdiv(75600 * 40, 64) == triton.cdiv(75600 * 40, 64)  # the 14B shape's rows
