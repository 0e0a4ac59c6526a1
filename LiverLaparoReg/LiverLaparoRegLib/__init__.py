"""Qt-free logic of the LiverLaparoReg module."""
