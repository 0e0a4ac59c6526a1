"""Learned FluoroReg methods (separate issue)."""
