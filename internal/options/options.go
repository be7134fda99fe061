// Package options holds the one rule for the numbers in the option structs of Castellan's
// embeddable packages (runtime, egress, plugins): a field's zero value takes its documented
// default, and a negative value is refused where the options are used, by an error that names
// the field. "None" and "unlimited" are never a magic number; where an option needs one it is
// a separate, documented field. docs/embedding.md describes the whole style.
//
// The rule is checked over the struct by reflection so that a field added later cannot
// escape it.
package options

import (
	"fmt"
	"reflect"
	"time"
)

var durationType = reflect.TypeFor[time.Duration]()

// CheckNotNegative returns an error naming the first exported field of the struct v (or of a
// struct field in it, not through pointers) that is a plain number or a time.Duration and is
// negative, such as
// "runtime.Limits.HTTPCalls is -1; it must not be negative (0 takes the default)". It
// returns nil when v is not a struct.
func CheckNotNegative(v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Struct {
		return nil
	}
	return check(rv, rv.Type().String())
}

func check(v reflect.Value, path string) error {
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		fv, name := v.Field(i), path+"."+f.Name
		if f.Type.PkgPath() != "" && f.Type != durationType && fv.Kind() != reflect.Struct {
			continue // an enumeration such as egress.AuthKind is checked by its own rules
		}
		negative := false
		switch fv.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			negative = fv.Int() < 0
		case reflect.Float32, reflect.Float64:
			negative = fv.Float() < 0
		case reflect.Struct:
			if err := check(fv, name); err != nil {
				return err
			}
		}
		if negative {
			shown := fmt.Sprint(fv.Interface())
			if fv.Type() == durationType {
				shown = time.Duration(fv.Int()).String()
			}
			return fmt.Errorf("%s is %s; it must not be negative (0 takes the default)", name, shown)
		}
	}
	return nil
}
