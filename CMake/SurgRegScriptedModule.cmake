#-----------------------------------------------------------------------------
# surgreg_add_scripted_module(<ModuleName>)
#
# Builds one scripted module of this extension, the same way for all four:
#   scripts   = <ModuleName>.py + every .py of its Qt-free package <ModuleName>Lib/
#   resources = Resources/Icons/*.png, Resources/UI/*.ui, and the bundled weights with
#               their manifests in <ModuleName>Lib/ (see SurgicalReg2D3DLib/models.py)
# with Slicer's generic tests, plus the module's ScriptedLoadableModuleTest as a ctest.
# Call it from the module's own CMakeLists.txt.
macro(surgreg_add_scripted_module MODULE_NAME)
  file(GLOB_RECURSE MODULE_LIB_SCRIPTS
    RELATIVE ${CMAKE_CURRENT_SOURCE_DIR}
    CONFIGURE_DEPENDS
    ${CMAKE_CURRENT_SOURCE_DIR}/${MODULE_NAME}Lib/*.py
    )
  list(FILTER MODULE_LIB_SCRIPTS EXCLUDE REGEX "__pycache__")

  set(MODULE_PYTHON_SCRIPTS
    ${MODULE_NAME}.py
    ${MODULE_LIB_SCRIPTS}
    )

  file(GLOB_RECURSE MODULE_PYTHON_RESOURCES
    RELATIVE ${CMAKE_CURRENT_SOURCE_DIR}
    CONFIGURE_DEPENDS
    ${CMAKE_CURRENT_SOURCE_DIR}/Resources/Icons/*.png
    ${CMAKE_CURRENT_SOURCE_DIR}/Resources/UI/*.ui
    ${CMAKE_CURRENT_SOURCE_DIR}/${MODULE_NAME}Lib/*.json
    ${CMAKE_CURRENT_SOURCE_DIR}/${MODULE_NAME}Lib/*.pt
    ${CMAKE_CURRENT_SOURCE_DIR}/${MODULE_NAME}Lib/*.pth
    )
  list(FILTER MODULE_PYTHON_RESOURCES EXCLUDE REGEX "__pycache__")

  slicerMacroBuildScriptedModule(
    NAME ${MODULE_NAME}
    SCRIPTS ${MODULE_PYTHON_SCRIPTS}
    RESOURCES ${MODULE_PYTHON_RESOURCES}
    WITH_GENERIC_TESTS
    )

  if(BUILD_TESTING)
    # The module's ScriptedLoadableModuleTest (<ModuleName>Test), run inside Slicer.
    slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)
  endif()
endmacro()
