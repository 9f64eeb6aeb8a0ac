"""puppet-master: part-level, drag-conditioned video generation (Puppet-Master, Li et al. 2024).

Layout: :mod:`puppet_master.drags` → :mod:`puppet_master.models` →
:mod:`puppet_master.pipelines` → :mod:`puppet_master.cli`.
"""

__version__ = "0.1.0"
