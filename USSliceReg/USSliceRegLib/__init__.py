"""Qt-free logic of the USSliceReg module."""
