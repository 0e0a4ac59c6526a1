"""Qt-free logic of the FluoroReg module."""
