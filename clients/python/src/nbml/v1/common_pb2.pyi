from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TASK_AUTO: _ClassVar[Task]
    TASK_CLASSIFICATION: _ClassVar[Task]
    TASK_REGRESSION: _ClassVar[Task]

class ColumnType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLUMN_TYPE_UNSPECIFIED: _ClassVar[ColumnType]
    COLUMN_TYPE_NUMERIC: _ClassVar[ColumnType]
    COLUMN_TYPE_CATEGORICAL: _ClassVar[ColumnType]
    COLUMN_TYPE_BOOLEAN: _ClassVar[ColumnType]
    COLUMN_TYPE_DATETIME: _ClassVar[ColumnType]
    COLUMN_TYPE_TEXT: _ClassVar[ColumnType]
TASK_UNSPECIFIED: Task
TASK_AUTO: Task
TASK_CLASSIFICATION: Task
TASK_REGRESSION: Task
COLUMN_TYPE_UNSPECIFIED: ColumnType
COLUMN_TYPE_NUMERIC: ColumnType
COLUMN_TYPE_CATEGORICAL: ColumnType
COLUMN_TYPE_BOOLEAN: ColumnType
COLUMN_TYPE_DATETIME: ColumnType
COLUMN_TYPE_TEXT: ColumnType
